#!/bin/sh
# Installs vigil: called by `make install` as  tools/install.sh BUILD DESTDIR PREFIX
#   $PREFIX/bin             vigild, vigil (and vigil-run when built)
#   unit dir                vigild.service, ExecStart pointing at $PREFIX/bin/vigild:
#                             PREFIX=/usr         -> /lib/systemd/system (Debian's unit dir)
#                             any other PREFIX    -> $PREFIX/lib/systemd/system
#                             (systemd reads /usr/local/lib/systemd/system; for other
#                             prefixes `systemctl link` the file). Env SYSTEMD_UNIT_DIR overrides.
#   /etc/vigil              vigild.json.example always; vigild.json only when there is none
#                           (an administrator's configuration is never overwritten)
#   $PREFIX/share/man       vigil.1, vigild.8
#   site-packages           the Python client (package vigil_client):
#                             PREFIX=/usr        -> /usr/lib/python3/dist-packages
#                             PREFIX=/usr/local  -> /usr/local/lib/python3.X/dist-packages
#                             other              -> $PREFIX/lib/python3.X/site-packages
# Everything lands under DESTDIR when it is set (staged installs, packaging, the tests).
# Env PYTHON names the interpreter whose version picks python3.X (default /usr/bin/python3).
set -eu

if [ $# -ne 3 ]; then
    echo "usage: $0 BUILD DESTDIR PREFIX   (DESTDIR may be empty)" >&2
    exit 2
fi
BUILD=$1
DESTDIR=$2
PREFIX=$3
cd "$(dirname "$0")/.."

case "$PREFIX" in
    /*) ;;
    *) echo "install: PREFIX must be an absolute path, got '$PREFIX'" >&2; exit 2 ;;
esac
PREFIX=${PREFIX%/}
[ -n "$PREFIX" ] || PREFIX=/
if [ -n "$DESTDIR" ]; then
    case "$DESTDIR" in
        /*) ;;
        *) DESTDIR="$(pwd)/$DESTDIR" ;;
    esac
    DESTDIR=${DESTDIR%/}
fi

for prog in vigild vigil; do
    if [ ! -x "$BUILD/bin/$prog" ]; then
        echo "install: $BUILD/bin/$prog is missing: build it first (make BUILD=$BUILD all)" >&2
        exit 1
    fi
done

PYTHON=${PYTHON:-/usr/bin/python3}
pyver=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || {
    echo "install: cannot run $PYTHON to find the Python version (set PYTHON=...)" >&2
    exit 1
}

bindir="$PREFIX/bin"
mandir="$PREFIX/share/man"
case "$PREFIX" in
    /usr) unitdir=/lib/systemd/system; pydir=/usr/lib/python3/dist-packages ;;
    /usr/local) unitdir=/usr/local/lib/systemd/system; pydir="/usr/local/lib/python$pyver/dist-packages" ;;
    *) unitdir="$PREFIX/lib/systemd/system"; pydir="$PREFIX/lib/python$pyver/site-packages" ;;
esac
unitdir=${SYSTEMD_UNIT_DIR:-$unitdir}
confdir=/etc/vigil

say() { echo "install: $*"; }

install -d "$DESTDIR$bindir"
for prog in vigild vigil vigil-run; do
    [ -x "$BUILD/bin/$prog" ] || continue
    install -m 0755 "$BUILD/bin/$prog" "$DESTDIR$bindir/$prog"
    say "$DESTDIR$bindir/$prog"
done

# The unit names the installed daemon, wherever PREFIX put it.
install -d "$DESTDIR$unitdir"
sed "s|^ExecStart=/usr/local/bin/vigild |ExecStart=$bindir/vigild |" systemd/vigild.service \
    >"$DESTDIR$unitdir/vigild.service.tmp"
if ! grep -q "^ExecStart=$bindir/vigild " "$DESTDIR$unitdir/vigild.service.tmp"; then
    rm -f "$DESTDIR$unitdir/vigild.service.tmp"
    echo "install: systemd/vigild.service has no 'ExecStart=/usr/local/bin/vigild ...' line to rewrite" >&2
    exit 1
fi
chmod 0644 "$DESTDIR$unitdir/vigild.service.tmp"
mv "$DESTDIR$unitdir/vigild.service.tmp" "$DESTDIR$unitdir/vigild.service"
say "$DESTDIR$unitdir/vigild.service"

# The daemon's own example configuration wins when its engineer ships one.
example=systemd/vigild.json.example
[ -f "$example" ] || example=systemd/vigild.json
if [ ! -f "$example" ]; then
    echo "install: no example configuration (systemd/vigild.json.example or systemd/vigild.json)" >&2
    exit 1
fi
install -d -m 0755 "$DESTDIR$confdir"
install -m 0644 "$example" "$DESTDIR$confdir/vigild.json.example"
say "$DESTDIR$confdir/vigild.json.example"
if [ -e "$DESTDIR$confdir/vigild.json" ]; then
    say "$DESTDIR$confdir/vigild.json exists: left as it is"
else
    install -m 0644 "$example" "$DESTDIR$confdir/vigild.json"
    say "$DESTDIR$confdir/vigild.json"
fi

install -d "$DESTDIR$mandir/man1" "$DESTDIR$mandir/man8"
install -m 0644 docs/man/vigil.1 "$DESTDIR$mandir/man1/vigil.1"
install -m 0644 docs/man/vigild.8 "$DESTDIR$mandir/man8/vigild.8"
say "$DESTDIR$mandir/man1/vigil.1, $DESTDIR$mandir/man8/vigild.8"

# The package only: not its tests, examples or byte-code caches.
install -d "$DESTDIR$pydir/vigil_client"
for f in clients/python/vigil_client/*.py; do
    install -m 0644 "$f" "$DESTDIR$pydir/vigil_client/"
done
say "$DESTDIR$pydir/vigil_client"
if [ -z "$DESTDIR" ] && ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.argv[1] in sys.path else 1)' "$pydir" 2>/dev/null; then
    say "$PYTHON does not search $pydir: use PYTHONPATH=$pydir to import vigil_client"
fi
case "$unitdir" in
    /lib/systemd/system|/usr/lib/systemd/system|/usr/local/lib/systemd/system|/etc/systemd/system) ;;
    *) say "systemd does not look in $unitdir: systemctl link $unitdir/vigild.service" ;;
esac

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    say "enable and start the service with: systemctl enable --now vigild"
fi
exit 0
