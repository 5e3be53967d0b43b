#!/usr/bin/env node
// reference.cjs — encodes a corpus with the independent JS tokenizer (transformers.js, as
// packaged in @lenml/tokenizers 3.7.2) so tests/test_tokenizer.c can compare id for id.
//
// Usage: node tests/tokenizer/reference.cjs NPM_DIR TOKENIZER_JSON CORPUS_TSV [CONFIG_JSON]
//   NPM_DIR        the node_modules folder holding @lenml/tokenizers (build/npm/node_modules)
//   TOKENIZER_JSON the same tokenizer.json file the C side loads
//   CORPUS_TSV     lines "category<TAB>hex bytes" (gen_corpus.cjs)
//   CONFIG_JSON    tokenizer_config.json; default {"tokenizer_class": "Qwen2Tokenizer"}
// Output, one line per corpus line: "ids<TAB>nfc_hex<TAB>decode_hex" where ids are comma
// separated, nfc_hex is the input as the JS side sees it (bytes through a WHATWG TextDecoder)
// after String.prototype.normalize("NFC"), and decode_hex is decode(ids) with special tokens
// kept and no clean-up.
"use strict";
process.on("uncaughtException", (e) => {
  // Short message: the library is minified, a stack trace would print megabytes of it.
  process.stderr.write("reference.cjs: " + (e && e.message ? e.message : String(e)) + "\n");
  process.exit(2);
});
const fs = require("fs");
const path = require("path");

function die(msg) {
  process.stderr.write("reference.cjs: " + msg + "\n");
  process.exit(2);
}

const [npmDir, tokPath, corpusPath, configPath] = process.argv.slice(2);
if (!npmDir || !tokPath || !corpusPath)
  die("usage: reference.cjs NPM_DIR TOKENIZER_JSON CORPUS_TSV [CONFIG_JSON]");

let lib;
try {
  lib = require(path.resolve(npmDir, "@lenml/tokenizers"));
} catch (e) {
  die(`cannot load @lenml/tokenizers from ${npmDir} (run tools/install-deps.sh): ${e.message}`);
}
const tokenizerJSON = JSON.parse(fs.readFileSync(tokPath, "utf8"));
const tokenizerConfig = configPath
  ? JSON.parse(fs.readFileSync(configPath, "utf8"))
  : { tokenizer_class: "Qwen2Tokenizer" };
const tok = lib.TokenizerLoader.fromPreTrained({ tokenizerJSON, tokenizerConfig });

// ignoreBOM keeps a leading U+FEFF, which is text here, not a byte order mark.
const decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
const lines = fs.readFileSync(corpusPath, "utf8").split("\n");
const out = [];
for (const line of lines) {
  if (line === "") continue;
  const tab = line.indexOf("\t");
  const hex = tab >= 0 ? line.slice(tab + 1) : line;
  const text = decoder.decode(Buffer.from(hex, "hex"));
  const ids = tok.encode(text, { add_special_tokens: false });
  const nfc = Buffer.from(text.normalize("NFC"), "utf8").toString("hex");
  const dec = ids.length
    ? Buffer.from(tok.decode(ids, { skip_special_tokens: false, clean_up_tokenization_spaces: false }), "utf8").toString("hex")
    : "";
  out.push(ids.join(",") + "\t" + nfc + "\t" + dec);
}
process.stdout.write(out.join("\n") + "\n");
