#!/usr/bin/env node
// gen_corpus.cjs — writes the tokenizer comparison corpus to stdout, deterministically (fixed
// seed, no clock, no environment): one string per line as "category<TAB>hex of its bytes".
// Hex keeps every byte intact, including invalid UTF-8, NUL, CR and line separators.
//
// Usage: node tests/tokenizer/gen_corpus.cjs > corpus.tsv
//
// Random code points avoid the letters and numbers assigned after Unicode 14 (the list below,
// made by comparing node 20's Unicode 17 \p{L}/\p{N} with PCRE2 10.42's tables): the C
// tokenizer's PCRE2 sees them as unassigned symbols, a known, documented difference
// (model/tokenizer.h), not something this corpus should trip over at random.
"use strict";

const NEWER_THAN_UNICODE_14 = [
  [0x88f, 0x88f], [0xc5c, 0xc5c], [0xcdc, 0xcdc], [0x1c89, 0x1c8a], [0xa7cb, 0xa7cf],
  [0xa7d2, 0xa7d2], [0xa7d4, 0xa7d4], [0xa7da, 0xa7dc], [0xa7f1, 0xa7f1], [0x105c0, 0x105f3],
  [0x10940, 0x10959], [0x10d40, 0x10d65], [0x10d6f, 0x10d85], [0x10ec2, 0x10ec7],
  [0x1123f, 0x11240], [0x11380, 0x113ff], [0x116d0, 0x116e3], [0x11bc0, 0x11bf9],
  [0x11db0, 0x11def], [0x11f00, 0x11f5f], [0x1342f, 0x1342f], [0x13430, 0x143ff],
  [0x16100, 0x1613f], [0x16d40, 0x16d7f], [0x16ea0, 0x16edf], [0x16ff0, 0x16fff],
  [0x187f8, 0x187ff], [0x18cff, 0x18cff], [0x18d09, 0x18dff], [0x1b132, 0x1b132],
  [0x1b155, 0x1b155], [0x1ccf0, 0x1ccf9], [0x1d2c0, 0x1d2d3], [0x1df25, 0x1df2a],
  [0x1e030, 0x1e08f], [0x1e4d0, 0x1e4ff], [0x1e5d0, 0x1e5ff], [0x1e6c0, 0x1e6ff],
  [0x2b739, 0x2b73f], [0x2cea2, 0x2ceaf], [0x2ebf0, 0x2ee5d], [0x31350, 0x33479],
];

// mulberry32: tiny, fast, and identical on every node version.
let seed = 0x5eed1234;
function rnd() {
  seed = (seed + 0x6d2b79f5) >>> 0;
  let t = seed;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const ri = (a, b) => a + Math.floor(rnd() * (b - a + 1)); // inclusive
const pick = (arr) => arr[Math.floor(rnd() * arr.length)];
const chance = (p) => rnd() < p;
const cp = (c) => String.fromCodePoint(c);
const repeat = (n, f) => Array.from({ length: n }, f);

const out = [];
function add(cat, s) {
  const buf = Buffer.isBuffer(s) ? s : Buffer.from(s, "utf8");
  out.push(cat + "\t" + buf.toString("hex"));
}

// ---------------------------------------------------------------------------------------------
// Pools

const latin = [
  "Café crème brûlée", "naïve façade", "Ångström unit", "Übermäßig größer als Öl",
  "señor, año, niño, ¿qué tal?", "ação e coração", "Zażółć gęślą jaźń", "Tiếng Việt có dấu",
  "Příliš žluťoučký kůň úpěl ďábelské ódy", "İstanbul ıIiİ", "Straße ẞ", "œuvre Œ æ Æ ø Ø",
  "ﬁne ﬂour ligatures", "ǅ ǈ ǋ titlecase", "Þórr ð Ð", "Ærøskøbing", "Đà Nẵng", "Şişli Ğ",
  "façon d'être", "Grüße aus Köln", "Mañana será otro día", "L'été à Besançon",
  "Ça va très bien", "Cœur de lion", "Kraków Łódź", "Brașov și Timișoara", "Ελληνικά",
];
const words = [
  "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "video", "stream", "camera",
  "frame", "person", "walking", "car", "parked", "door", "opened", "at", "seconds", "What",
  "happened", "Describe", "image", "THE", "Hello", "World", "tokenizer", "BPE", "Qwen",
  "don", "won", "it", "they", "we", "I", "you", "HTTPServer", "camelCase", "snake_case",
  "x86_64", "e.g.", "U.S.A.", "naïve", "rôle", "Zürich", "München", "São", "Paulo",
];
const scripts = {
  chinese: ["我们的视频监控系统可以实时回答问题", "这是一个测试句子", "今天天气很好。",
    "请描述这张图片中的内容", "人工智能", "北京市海淀区", "你好，世界！", "繁體中文測試",
    "𠀀𠀁𪚥𫠠", "豈更車賈", "〇一二三四五", "（括号）【方括号】《书名》"],
  japanese: ["こんにちは世界", "カタカナとひらがな", "ｶﾀｶﾅ半角", "東京都渋谷区", "ガギグゲゴ",
    "が", "パピプペポ", "日本語のテキストです。", "ゔ", "ヴァイオリン", "ー〜・"],
  korean: ["안녕하세요 세계", "한국어 문장입니다", "동영상을 설명해 주세요", "각각갂",
    "\u1100\u1161\u11a8", "\u1112\u1161\u11ab\u1100\u1173\u11af", "ㄱㄴㄷㄹ", "똠방각하"],
  cyrillic: ["Привет, мир!", "Съешь же ещё этих мягких французских булок", "Ёлка ёж",
    "Україна ї є ґ", "Беларусь ў", "Српски ђ ћ џ", "Й й", "ВИДЕО Поток"],
  greek: ["Καλημέρα κόσμε", "ά έ ή ί ό ύ ώ", "\u1f71\u1f73\u1f75", "ΐ ΰ ϊ ϋ", "Ωμέγα Ω",
    "σίσυφος ς"],
  arabic: ["مرحبا بالعالم", "بِسْمِ اللَّهِ الرَّحْمَٰنِ الرَّحِيمِ", "٠١٢٣٤٥٦٧٨٩", "فارسی گچپژ",
    "اردو ٹ ڈ ڑ", "\ufdfa", "لا إله", "ﻻ ﷲ"],
  hebrew: ["שלום עולם", "שָׁלוֹם עוֹלָם", "\ufb2a\ufb2b\ufb2c", "בְּרֵאשִׁית", "יִשְׂרָאֵל"],
  devanagari: ["नमस्ते दुनिया", "हिन्दी भाषा", "\u0958\u0959\u095a", "क़ ख़ ग़",
    "क्षत्रिय", "०१२३४५", "ॐ", "मराठी ळ"],
  thai: ["สวัสดีชาวโลก", "ภาษาไทย", "กรุงเทพมหานคร", "๑๒๓", "ก่อน ก้อน"],
  other: ["தமிழ் மொழி", "বাংলা ভাষা", "\u09dc\u09dd", "ქართული ენა", "Հայերեն",
    "አማርኛ", "ཀྵ \u0f69 \u0f73", "ខ្មែរ", "မြန်မာ", "සිංහල", "ꦗꦮ", "ᚠᛇᚻ", "𐌰𐌱𐌲",
    "ᏣᎳᎩ", "ᠮᠣᠩᠭᠣᠯ", "ትግርኛ", "ܐܪܡܝܐ", "ދިވެހި", "ଓଡ଼ିଆ \u0b5c", "ਪੰਜਾਬੀ \u0a59"],
};
const allScriptPhrases = Object.values(scripts).flat();

const emoji = ["👍", "👍🏽", "👍🏿", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🏳️‍⚧️", "🇫🇷", "🇯🇵🇺🇸",
  "1️⃣", "#️⃣", "❤️", "❤", "🧑🏿‍💻", "😀😃😄😁", "👩🏻‍🤝‍👨🏿", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "🫠", "🤌🏼",
  "👁️‍🗨️", "🐈‍⬛", "☺️", "✌🏾", "🙋‍♀️", "🧔🏻‍♂️", "🫱🏻‍🫲🏿", "©️", "™", "🔥🔥🔥", "🎥📹"];

const code = [
  "#include <stdio.h>\nint main(void) {\n    printf(\"hello\\n\");\n    return 0;\n}\n",
  "def f(x):\n\treturn [i ** 2 for i in range(x) if i % 2 == 0]\n",
  "const add = (a, b) => a + b; // arrow\nconsole.log(`${add(1, 2)}`);",
  "fn main() {\n    let v: Vec<u8> = vec![1, 2, 3];\n    println!(\"{:?}\", v);\n}",
  "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
  "for f in *.mp4; do ffmpeg -i \"$f\" -vf scale=640:-2 \"out/${f%.mp4}.mkv\"; done",
  "{\"key\": [1, 2.5, true, null], \"nested\": {\"a\": \"b\"}}",
  "<div class=\"x\"><p>Hello &amp; welcome</p></div>",
  "package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"hi\") }",
  "if (a != b && c <= d || !e) { x += 1; y <<= 2; z >>>= 3; }",
  "    indented\n        more\n\t\ttabs\n",
  "ptr->next = (struct node *)malloc(sizeof(*ptr));",
  "x = {'a': 1, \"b\": 2}  # comment\nprint(x['a'])",
  "$ ls -la /usr/local/bin | grep -v '^d' > /dev/null 2>&1",
  "a:hover::before { content: '\\201C'; margin: 0 auto !important; }",
  "std::vector<std::string> v{\"a\", \"b\"}; auto it = v.begin();",
  "@@ -1,4 +1,5 @@\n-old line\n+new line\n context",
  "let re = /[a-z]+\\d{2,3}/gi; s.replace(re, '$1');",
];

const ws = [" ", "  ", "   ", "\t", "\n", "\r\n", "\r", "\n\n", "\u00a0", "\u3000", "\u2028",
  "\u2029", "\ufeff", "\u0085", "\u200b", "\u180e", "\u000b", "\u000c", "\u2003", "\u202f",
  "\u205f", "\u1680", " \t", "\t ", " \n ", "\n \n"];

const added = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
  "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
  "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
  "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
  "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
  "<think>", "</think>"];
const partial = ["<|im_sta", "<|im_start", "<|im_start|", "im_start|>", "<|im_end|>>",
  "<<|im_end|>", "<|<|im_start|>", "<|vision_", "<think", "</think", "<thi nk>", "<|>", "<|",
  "|>", "<||>", "<|IM_START|>", "< |im_end| >", "<|im_end|\u0338", "<think>>", "<<think>"];

const contractions = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"];
const marks = [0x300, 0x301, 0x302, 0x303, 0x308, 0x30a, 0x30c, 0x323, 0x327, 0x328, 0x331,
  0x338, 0x345, 0x34f, 0x35c, 0x361, 0x489, 0x5b4, 0x5bc, 0x64b, 0x651, 0x670, 0x93c, 0x94d,
  0x1ab0, 0x1dc0, 0x20d7, 0x20e3, 0xfe0f, 0xfe20, 0x3099, 0x309a, 0x1d165];
const zeroWidth = [0x200b, 0x200c, 0x200d, 0x2060, 0xad, 0x200e, 0x200f, 0x202a, 0x202b,
  0x202c, 0x202d, 0x202e, 0x2066, 0x2067, 0x2068, 0x2069, 0x061c, 0xfeff, 0x180e, 0x034f];
const unusual = [0xe000, 0xe001, 0xf8ff, 0xf0000, 0xf0001, 0xffffd, 0x100000, 0x10fffd,
  0xfdd0, 0xfdd1, 0xfdef, 0xfffe, 0xffff, 0x1fffe, 0x1ffff, 0x10fffe, 0x10ffff, 0xd7ff,
  0xd7fb, 0xd7b0, 0xfffd, 0xfffc, 0xfff9, 0xfffb, 0x10000, 0x0, 0x1, 0x7, 0x1b, 0x1f, 0x7f,
  0x80, 0x85, 0x9f, 0x378, 0x379, 0x380, 0x38b, 0x3a2, 0x530, 0x557, 0x1d455, 0xe0001,
  0xe0020, 0xe007f, 0xe0100, 0xe01ef, 0xfe00, 0x2028, 0x2029, 0xe0000, 0x1d7ce, 0x1d400,
  0x2160, 0x2182, 0xbd, 0xb2, 0x2070, 0x3007, 0x10107, 0x1f100];

function randomCodePoint() {
  for (;;) {
    let c;
    const r = rnd();
    if (r < 0.35) c = ri(0x20, 0x7ff);
    else if (r < 0.75) c = ri(0x800, 0xffff);
    else if (r < 0.9) c = ri(0x10000, 0x3ffff);
    else c = pick([ri(0xe0000, 0xe01ff), ri(0xf0000, 0xf00ff), ri(0x10ff00, 0x10ffff)]);
    if (c >= 0xd800 && c <= 0xdfff) continue;
    if (NEWER_THAN_UNICODE_14.some(([a, b]) => c >= a && c <= b)) continue;
    return c;
  }
}

function randomCase(s) {
  return Array.from(s, (ch) => (chance(0.5) ? ch.toUpperCase() : ch.toLowerCase())).join("");
}
function sentence(n) {
  return repeat(n, () => pick(words)).join(pick([" ", " ", " ", ", ", "  ", "\t", "\n"]));
}
function numberString() {
  switch (ri(0, 9)) {
  case 0: return repeat(ri(1, 60), () => String(ri(0, 9))).join("");
  case 1: return `${ri(0, 99999)}.${ri(0, 99999)}`;
  case 2: return `${ri(1, 999)},${String(ri(0, 999)).padStart(3, "0")},${String(ri(0, 999)).padStart(3, "0")}.${ri(10, 99)}`;
  case 3: return `${ri(1, 9)}.${ri(0, 99999)}e-${ri(1, 30)}`;
  case 4: return `+1 (${ri(100, 999)}) ${ri(100, 999)}-${ri(1000, 9999)}`;
  case 5: return repeat(ri(1, 12), () => cp(0x660 + ri(0, 9))).join("");
  case 6: return repeat(ri(1, 12), () => cp(0xff10 + ri(0, 9))).join("");
  case 7: return `${ri(0, 23)}:${String(ri(0, 59)).padStart(2, "0")}:${String(ri(0, 59)).padStart(2, "0")}.${ri(0, 999)}`;
  case 8: return pick(["²³", "Ⅻ", "½ ¾", "①②③", "𝟘𝟙𝟚", "〇", "0x7fffffff", "1e308", "-0.0"]) + String(ri(0, 1000));
  default: return `<${(ri(0, 100000) / 10).toFixed(1)} seconds>`;
  }
}
function combining(base) {
  let s = base;
  const n = ri(1, 6);
  for (let i = 0; i < n; i++) s += cp(pick(marks));
  return s;
}
function fragment() {
  switch (ri(0, 11)) {
  case 0: return pick(latin);
  case 1: return pick(allScriptPhrases);
  case 2: return pick(emoji);
  case 3: return pick(code);
  case 4: return pick(ws).repeat(ri(1, 4));
  case 5: return numberString();
  case 6: return pick(words) + randomCase(pick(contractions));
  case 7: return pick(added);
  case 8: return pick(partial);
  case 9: return combining(pick(["a", "e", "o", "A", "n", "ç", "x", "ア", "가", "<", ">", "="]));
  case 10: return cp(pick(zeroWidth));
  default: return repeat(ri(1, 5), () => cp(chance(0.5) ? pick(unusual) : randomCodePoint())).join("");
  }
}

// ---------------------------------------------------------------------------------------------
// Fixed samples: each pool entry on its own, so a failure names a precise case.

add("empty", "");
for (const s of latin) add("latin", s);
for (const [name, list] of Object.entries(scripts)) for (const s of list) add("script-" + name, s);
for (const s of emoji) add("emoji", s);
for (const s of code) add("code", s);
for (const s of ws) add("whitespace", s);
for (const s of added) add("added-token", s);
for (const s of partial) add("partial-token", s);
for (const c of zeroWidth) add("zero-width", "a" + cp(c) + "b " + cp(c));
for (const c of unusual) add("unusual", "x" + cp(c) + " " + cp(c) + cp(c) + "1" + cp(c));
for (const c of contractions) {
  for (const w of ["it", "IT", "We", "she", "", " "]) {
    add("contraction", w + c);
    add("contraction", w + c.toUpperCase() + " next");
  }
}
for (const s of ["'ſ", "it'ſ", "'K", "’s it’s", "''s", "' s", "'S'T'RE", "'Ll'lL", "'dd", "'dog", "'ve'", "Rock 'n' roll"])
  add("contraction-edge", s);

// NFC matters: decomposed forms, singletons, exclusions, Hangul jamo, reordering.
const nfcCases = [
  "e\u0301", "E\u0301\u0327", "a\u0323\u0307", "a\u0307\u0323", "o\u0308\u0304", "A\u030a",
  "\u212b", "\u2126", "\u1f71", "\u0958", "\u09dc", "\u0b5c", "\u0f73", "\u0f75", "\ufb2a",
  "\u1100\u1161", "\u1100\u1161\u11a8", "\uac00\u11a8", "\u1112\u1161\u11ab", "<\u0338",
  "=\u0338", ">\u0338", "\u0041\u0300\u0301", "\u0391\u0313\u0300\u0345", "\u05d1\u05bc\u05b0",
  "\u0915\u093c", "\u0b47\u0b3e", "\u0bc6\u0bbe", "\u0cbf\u0cd5", "\u0d46\u0d3e", "\u1025\u102e",
  "\u3046\u3099", "\u30cf\u309a", "\u0063\u0327\u0301", "\u1e9b\u0323", "\u0626\u0654",
  "\u00e9\u0301", "\u1ea1\u0302", "\u01b0\u0303", "n\u0303o\u0308", "\uf900\uf901\ufa10",
  "\u2000\u2001", "\u0340\u0341\u0343\u0344", "\u0374\u037e\u0387", "\u1fee\u1ffd",
];
for (const s of nfcCases) add("nfc", s);
// NFC of the whole string would compose ">" + U+0338 across the token; the tokenizers do not.
add("nfc-across-token", "<|im_end|>\u0338 <think>\u0338x</think>\u0338");
for (const s of nfcCases) add("nfc-context", "word" + s + "word " + s + s);
for (const s of [...latin, ...scripts.korean, ...scripts.greek, ...scripts.japanese, ...scripts.devanagari])
  add("nfd", s.normalize("NFD"));
for (const s of [...latin, ...scripts.korean]) add("nfkd", s.normalize("NFKD"));

// Invalid UTF-8 (the reference sees what a TextDecoder makes of it: U+FFFD per maximal subpart).
const badBytes = [[0x80], [0xbf], [0xc0, 0x80], [0xc1, 0xbf], [0xc2], [0xe2, 0x82], [0xe0, 0x80, 0x80],
  [0xe0, 0x9f, 0xbf], [0xed, 0xa0, 0x80], [0xed, 0xbf, 0xbf], [0xf0, 0x9f, 0x98], [0xf0, 0x8f, 0xbf, 0xbf],
  [0xf4, 0x90, 0x80, 0x80], [0xf5, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xfe], [0xff], [0xfe, 0xff],
  [0xef, 0xbb], [0xc3, 0x28], [0xe2, 0x28, 0xa1], [0xf0, 0x28, 0x8c, 0x28], [0x80, 0x80, 0x80]];
for (const b of badBytes) {
  add("invalid-utf8", Buffer.from(b));
  add("invalid-utf8", Buffer.concat([Buffer.from("ab "), Buffer.from(b), Buffer.from("cd")]));
  add("invalid-utf8", Buffer.concat([Buffer.from("é"), Buffer.from(b), Buffer.from("<|im_end|>"), Buffer.from(b)]));
}

// ---------------------------------------------------------------------------------------------
// Generated strings.

for (let i = 0; i < 150; i++) {
  let s = repeat(ri(1, 8), () => (chance(0.6) ? pick(latin) : pick(words))).join(pick([" ", ", ", ". ", "\n"]));
  if (chance(0.3)) s = randomCase(s);
  add("latin-gen", s);
}
for (let i = 0; i < 250; i++) {
  const list = pick(Object.values(scripts));
  add("script-gen", repeat(ri(1, 6), () => pick(list)).join(pick(["", " ", "，", "。", "\n", " - ", "、"])));
}
for (let i = 0; i < 120; i++)
  add("emoji-gen", repeat(ri(1, 6), () => pick(emoji) + (chance(0.5) ? pick(words) : "")).join(pick(["", " ", "\n"])));
for (let i = 0; i < 120; i++) {
  let s = pick(code);
  if (chance(0.5)) s = s.replace(/    /g, "\t");
  if (chance(0.3)) s = s.replace(/\n/g, "\r\n");
  if (chance(0.3)) s = " ".repeat(ri(1, 12)) + s;
  add("code-gen", s + pick(["", "\n", "\n\n", "   "]));
}
for (let i = 0; i < 200; i++) {
  const parts = repeat(ri(1, 10), () => (chance(0.6) ? pick(ws).repeat(ri(1, 8)) : pick(words)));
  add("whitespace-gen", parts.join(""));
}
for (let i = 0; i < 160; i++)
  add("number-gen", repeat(ri(1, 4), numberString).join(pick([" ", "", "-", "/", "x", "\n"])));
for (let i = 0; i < 150; i++)
  add("contraction-gen", repeat(ri(1, 5), () => pick(words) + randomCase(pick(contractions))).join(pick([" ", "", "\n"])));
for (let i = 0; i < 250; i++) {
  const parts = repeat(ri(1, 8), () => (chance(0.5) ? pick(added) : chance(0.3) ? pick(partial) : pick(words) + pick(["", " ", "\n"])));
  add("special-gen", parts.join(chance(0.5) ? "" : pick([" ", "\n", "  "])));
}
for (let i = 0; i < 150; i++)
  add("combining-gen", repeat(ri(1, 6), () => combining(pick(["a", "e", "i", "o", "u", "n", "c", "Z", "ア", "가", "α", "ж", "<", " "]))).join(chance(0.5) ? "" : " "));
for (let i = 0; i < 100; i++)
  add("zero-width-gen", repeat(ri(1, 6), () => pick(words) + cp(pick(zeroWidth))).join(""));
for (let i = 0; i < 200; i++)
  add("random-codepoints", repeat(ri(1, 24), () => cp(chance(0.2) ? pick(unusual) : randomCodePoint())).join(chance(0.7) ? "" : " "));
for (let i = 0; i < 120; i++) {
  const parts = repeat(ri(1, 6), () => Buffer.from(fragment(), "utf8"));
  const bad = repeat(ri(1, 3), () => Buffer.from(pick(badBytes)));
  const mixed = [];
  for (const p of parts) { mixed.push(p); if (chance(0.5) && bad.length) mixed.push(bad.pop()); }
  add("invalid-utf8-gen", Buffer.concat([...mixed, ...bad]));
}
for (let i = 0; i < 450; i++)
  add("mix", repeat(ri(1, 12), fragment).join(chance(0.5) ? "" : pick([" ", "\n", "\t", "  "])));

// Long strings: the BPE's long-word path, long whitespace runs, big mixed documents.
add("long", " ".repeat(20000));
add("long", "a".repeat(30000));
add("long", "\n".repeat(5000) + "x" + " \t".repeat(3000));
add("long", "的".repeat(8000));
add("long", "ab".repeat(9000) + "é".repeat(3000));
add("long", repeat(4000, () => pick(words)).join(" "));
add("long", repeat(600, fragment).join(""));
add("long", "0123456789".repeat(2000));
add("long", repeat(3000, () => cp(randomCodePoint())).join(""));
add("long", ("<|im_start|>" + sentence(20) + "<|im_end|>\n").repeat(300));

process.stdout.write(out.join("\n") + "\n");
