#!/bin/bash
# make demo: a newcomer's first minute with vigil. The daemon watches a live camera (a synthetic
# clip served over HTTP in real time by the ffmpeg CLI on loopback) with the shipped demo model,
# answers questions about it while it plays, and every answer is printed beside the truth.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
root=$(pwd)
bin=$root/$build/bin
model=$root/demo/model
py=/usr/bin/python3
[ -x "$py" ] || py=python3

work=$(mktemp -d /tmp/vigil-demo.XXXXXX)
vigild_pid= camera_pid= events_pid=
cleanup() {
    for p in $events_pid $camera_pid $vigild_pid; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
export VIGIL_ENDPOINT=ipc://$work/vigild.sock     # the events socket is found beside it

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
show() {   # a command as a user would type it
    local out='$' a
    for a in "$@"; do
        case $a in *[[:space:]\?\*\'\"]*) out+=" \"$a\"" ;; *) out+=" $a" ;; esac
    done
    printf '%s\n' "$out" | sed "s|$bin/||; s| $work/| |g"
}
vigil() { show vigil "$@"; "$bin/vigil" "$@"; }
json() { "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

cat <<EOF
vigil demo
==========
Model: demo/model, a tiny Qwen3-VL (4 layers, 39 MiB, the published checkpoint layout) trained
with the upstream implementation on synthetic videos of coloured shapes (demo/TASK.md). Its
weights are not random: it answers a few simple questions about such videos, and nothing else.
(The tests and benchmarks also run random-weight checkpoints made by vigil-gen-checkpoint; with
those the numbers are checked against the upstream model, and the words mean nothing.)
EOF

# ---- a camera ------------------------------------------------------------------------------------
seed=${VIGIL_DEMO_SEED:-1}   # VIGIL_DEMO_SEED=$RANDOM make demo: other clips
"$bin/vigil-make-clip" --type color_now --seed "$seed" --frames 80 --fps 10 --change-at-frame 50 \
    --out "$work/camera.mp4" --truth "$work/camera.json" >/dev/null
shape=$(json "$work/camera.json" "d['scene']['objects'][0]['shape']")
before=$(json "$work/camera.json" "d['scene']['objects'][0]['colors_per_frame'][0]")
after=$(json "$work/camera.json" "d['scene']['objects'][0]['colors_per_frame'][-1]")
change=$(json "$work/camera.json" "d['scene']['change_time_s']")
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port/camera.ts
say "1. A camera: an 8 s clip (vigil-make-clip, seed $seed): a $before $shape that turns $after at ${change} s,"
echo "   served live in real time by the ffmpeg CLI: $url"
ffmpeg -nostdin -hide_banner -loglevel error -re -i "$work/camera.mp4" -c copy -f mpegts -listen 1 "$url" \
    >"$work/camera.log" 2>&1 &
camera_pid=$!

# ---- the daemon ----------------------------------------------------------------------------------
say "2. vigild starts (log: vigild.log in a temporary folder)"
show vigild --model demo/model --endpoint "$VIGIL_ENDPOINT" --allowed-protocols http,tcp,file \
     --min-tokens-per-pair 4 --max-tokens-per-pair 16
"$bin/vigild" --model "$model" --endpoint "$VIGIL_ENDPOINT" --events-endpoint "ipc://$work/events.sock" \
    --allowed-protocols http,tcp,file --min-tokens-per-pair 4 --max-tokens-per-pair 16 \
    --log-format plain >"$work/vigild.log" 2>&1 &
vigild_pid=$!
for _ in $(seq 100); do "$bin/vigil" ping >/dev/null 2>&1 && break; sleep 0.1; done
vigil ping

say "3. Watch the camera; a standing question after every frame pair; follow the events"
vigil stream add cam "$url"
vigil watch add cam "What color is the shape now?" --on-pair --name colour -n 4
show vigil events --stream cam
"$bin/vigil" events --stream cam --kind watch,state > >(sed -u 's/^/   [event] /') &
events_pid=$!

truth_at() {   # the colour of the frame pair whose <t seconds> stamp is $1
    awk -v m="$1" -v c="$change" -v a="$before" -v b="$after" 'BEGIN { print (m - 0.2 >= c - 0.001) ? b : a }'
}
right=0 asked=0
score() {   # answer truth [what]
    asked=$((asked + 1))
    if [ "$1" = "$2" ]; then right=$((right + 1)); mark=right; else mark=WRONG; fi
    printf '   -> %-14s truth%s: %-14s [%s]\n' "$1" "${3:-}" "$2" "$mark"
}
ask() {   # STREAM QUESTION [options]: the answer as it streams, its timing, and the truth
    show vigil ask "$@"
    "$bin/vigil" ask "$@" -n 8 2>"$work/ask.err" | tee "$work/ask.out"
    sed 's/^/   /' "$work/ask.err"
    local answer seen
    answer=$(tr -d '\n' <"$work/ask.out")
    seen=$(sed -n 's/.*frames up to \([0-9.]*\)s.*/\1/p' "$work/ask.err")
    if [ "$1" = cam ]; then
        score "$answer" "$(truth_at "${seen:-0}")" " of the frames up to ${seen}s"
    else
        score "$answer" "$truth"
    fi
}
pairs() { "$bin/vigil" status cam --json 2>/dev/null | "$py" -c 'import json,sys; print(json.load(sys.stdin)["stream"]["pairs_encoded"])' || echo 0; }

say "4. Questions while it plays (each answer streams token by token, then its timing)"
deadline=$((SECONDS + 40))
while [ "$(pairs)" -lt 1 ] && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
while [ $SECONDS -lt $deadline ]; do
    n=$(pairs)
    ask cam "What color is the shape now?"
    [ "$n" -ge 8 ] && break
    sleep 1.5
done

echo "   (the clip is over: vigild keeps retrying the camera, and keeps its cache)"
say "5. The whole clip is cached: windows choose which frames an answer looks at"
ask cam "What color is the shape?" --window 2s
ask cam "What color is the shape?" --to-media 3s

say "6. Two more streams, files: a clip with one or two shapes, and one where a second shape appears"
"$bin/vigil-make-clip" --type count --seed "$seed" --out "$work/count.mp4" --truth "$work/count.json" >/dev/null
"$bin/vigil-make-clip" --type appear --seed "$seed" --out "$work/appear.mp4" --truth "$work/appear.json" >/dev/null
vigil stream add shapes "$work/count.mp4"
vigil stream add arrival "$work/appear.mp4"
for s in shapes arrival; do
    for _ in $(seq 100); do
        "$bin/vigil" status "$s" --json 2>/dev/null | grep -q '"state":[[:space:]]*"ended"' && break
        sleep 0.1
    done
done
truth=$(json "$work/count.json" "d['questions'][0]['expected']")
ask shapes "How many shapes are there?"
truth=$(json "$work/appear.json" "d['questions'][0]['expected']")
ask arrival "When did the second shape appear?"

say "7. Status"
vigil status
vigil watch ls

say "8. Shut down: SIGTERM (running answers finish, streams stop, exit 0)"
kill "$events_pid" 2>/dev/null || true
kill -TERM "$vigild_pid"
rc=0; wait "$vigild_pid" || rc=$?
vigild_pid=
tail -n 3 "$work/vigild.log" | sed 's/^/   /'
echo "   vigild exited with status $rc"

say "$right of $asked answers right."
cat <<EOF
The demo model's measured accuracy (demo/TASK.md): "What color is the shape?" and "... now?" 1.00,
"How many shapes are there?" ~0.95, "When did the second shape appear?" ~0.8; make bench measures
the same through the daemon on fresh clips (bench_demo_accuracy).

With a real checkpoint (any published Qwen3-VL, dense or MoE, unchanged):
  huggingface-cli download Qwen/Qwen3-VL-2B-Instruct --local-dir ~/models/Qwen3-VL-2B-Instruct
  $build/bin/vigild --model ~/models/Qwen3-VL-2B-Instruct --endpoint ipc:///tmp/vigild.sock &
  export VIGIL_ENDPOINT=ipc:///tmp/vigild.sock
  $build/bin/vigil stream add door rtsp://camera.local/stream
  $build/bin/vigil ask door "What is happening at the door?"
See README.md (Using vigil) and docs/deployment.md for budgets, fps and cache sizes on a small box.
EOF
[ "$rc" -eq 0 ]
