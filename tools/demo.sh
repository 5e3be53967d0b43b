#!/bin/bash
# make demo: a newcomer's first minute. Runs the shipped demo checkpoint (a tiny Qwen3-VL trained
# on synthetic videos of coloured shapes, demo/) over its example clips with the offline tool
# vigil-run, and prints each answer beside the truth.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
model=demo/model
echo "vigil demo: model $model (tiny Qwen3-VL trained on synthetic shape videos; see demo/TASK.md)"
echo "            offline path: FFmpeg decode -> upstream frame sampling -> ViT -> decoder, greedy"
echo
pass=0; agree=0; total=0
while IFS=$'\t' read -r clip question truth reference; do
    answer=$("$build/bin/vigil-run" --model "$model" --video "demo/clips/$clip" --prompt "$question" \
             --max-tokens 8 2>/tmp/vigil-demo.$$.err) || { cat /tmp/vigil-demo.$$.err >&2; exit 1; }
    timing=$(grep -E '^(vision|prefill|decode):' /tmp/vigil-demo.$$.err | tr '\n' ' ' || true)
    total=$((total + 1))
    mark="wrong"; [ "$answer" = "$truth" ] && { mark="right"; pass=$((pass + 1)); }
    [ "$answer" = "$reference" ] && agree=$((agree + 1))
    printf '%-21s %-35s answer: %-13s truth: %-13s [%s]  upstream model: %s\n' \
        "$clip" "$question" "$answer" "$truth" "$mark" "$reference"
    [ -n "$timing" ] && printf '%22s%s\n' "" "$timing"
done < <(python3 -c '
import json
d = json.load(open("demo/clips/answers.json"))
for c in d["clips"]:
    for q in c["questions"]:
        if q["type"] in ("color", "color_now", "count", "appear"):
            print("\t".join([c["file"], q["question"], q["expected"], q["model_answer_mp4"]]))
')
rm -f /tmp/vigil-demo.$$.err
echo
echo "$pass of $total answers right; $agree of $total equal to the upstream (transformers) model's answer"
echo "on the same MP4s. The checkpoint's measured accuracy: color and color_now 1.00, count ~0.95,"
echo "appear ~0.8 (demo/TASK.md)."
echo
echo "With a real checkpoint: huggingface-cli download Qwen/Qwen3-VL-2B-Instruct --local-dir ~/qwen3-vl-2b"
echo "  $build/bin/vigil-run --model ~/qwen3-vl-2b --video clip.mp4 --prompt 'What happens in this video?'"
