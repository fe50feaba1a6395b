#!/usr/bin/env bash
# Install check: install evstream under a temporary prefix, build a plugin
# outside the tree against the installed headers through pkg-config, load it
# in the installed evstreamd, and talk to it. Prints "N passed, N failed".
# Usage: tests/install_check.sh SRCDIR
set -u
SRC=$(cd "${1:-.}" && pwd)
WORK=$(mktemp -d /tmp/evs-install-XXXXXX)
PREFIX="$WORK/prefix"
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
    echo "install check: $*" >&2
    echo "0 passed, 1 failed"
    exit 1
}

mkdir -p "$WORK/build" && cd "$WORK/build" || fail "no temp dir"
"$SRC/configure" -q --prefix="$PREFIX" >/dev/null || fail "configure"
make -j"$(nproc)" >/dev/null 2>&1 || fail "make"
make install >/dev/null 2>&1 || fail "make install"

# An out-of-tree plugin: the echo example, compiled with pkg-config only.
mkdir -p "$WORK/plugin" && cp "$SRC/examples/echo/echo.c" "$WORK/plugin/my_echo.c"
export PKG_CONFIG_PATH="$PREFIX/lib/pkgconfig"
cc -O2 -Wall -Werror -shared -fPIC -o "$WORK/plugin/my_echo.so" "$WORK/plugin/my_echo.c" \
    $(pkg-config --cflags --libs evstream) || fail "building a plugin with pkg-config"

cat >"$WORK/evstreamd.conf" <<CONF
workers = 1;
allow_root = $([ "$(id -u)" -eq 0 ] && echo true || echo false);
plugin_dir = "$WORK/plugin";
plugins = ( { name = "mine"; path = "my_echo.so"; } );
listeners = ( { name = "mine"; listen = "127.0.0.1:0"; plugin = "mine"; } );
CONF
export LD_LIBRARY_PATH="$PREFIX/lib"
"$PREFIX/bin/evstreamd" -t -c "$WORK/evstreamd.conf" >/dev/null || fail "evstreamd -t"
[ -f "$PREFIX/etc/evstreamd.conf" ] || fail "the sample config was not installed"
[ -f "$PREFIX/lib/evstream/plugins/echo.so" ] || fail "the example plugins were not installed"
[ -f "$PREFIX/share/man/man8/evstreamd.8" ] || fail "the man pages were not installed"

"$PREFIX/bin/evstreamd" -c "$WORK/evstreamd.conf" --ports-file "$WORK/ports" >"$WORK/out" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -s "$WORK/ports" ] && break; sleep 0.1; done
port=$(awk '{print $2}' "$WORK/ports" | sed 's/.*://')
[ -n "$port" ] || fail "the installed daemon did not start: $(cat "$WORK/out")"
answer=$(python3 - "$port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"installed\n")
print(s.recv(100).decode().strip())
PY
)
[ "$answer" = "installed" ] || fail "echo through the installed daemon gave '$answer'"
kill -TERM "$pid" && wait "$pid" || fail "the daemon did not stop cleanly"
pid=""
make uninstall >/dev/null 2>&1 || fail "make uninstall"
left=$(find "$PREFIX" -type f | wc -l)
[ "$left" -eq 0 ] || fail "make uninstall left $left files"
echo "install check: plugin built with pkg-config loads and serves in the installed daemon"
echo "1 passed, 0 failed"
