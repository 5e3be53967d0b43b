#!/bin/bash
# Runs every benchmark program with the inputs it needs. Generated checkpoints are cached in
# build/bench-data/ (real Qwen3-VL-2B shapes, random weights).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
data=$build/bench-data
mkdir -p "$data"
if [ ! -f "$data/qwen3vl-2b/config.json" ]; then
    "$build/bin/vigil-gen-checkpoint" --preset 2b --out "$data/qwen3vl-2b" --seed 1
fi
for b in "$build"/bench/*; do
    [ -x "$b" ] || continue
    echo "=== $(basename "$b")"
    case "$(basename "$b")" in
        bench_model|bench_daemon) "$b" "$data/qwen3vl-2b" ;;
        *) "$b" ;;
    esac
done
