#!/usr/bin/env bash
# evstream quick start.
#
#   ./quickstart.sh run     install what is missing, build, and run evstreamd
#                           in the foreground on conf/evstreamd.conf (Ctrl-C stops it)
#   ./quickstart.sh check   install what is missing, build, run the whole test suite
#
# Works on a fresh Debian/Ubuntu machine: missing packages are installed with
# apt-get (as root, or through sudo). The build goes to ./build (VPATH).
set -euo pipefail

cd "$(dirname "$0")"
SRC=$(pwd)
BUILD=${EVS_BUILD_DIR:-$SRC/build}
JOBS=$(nproc 2>/dev/null || echo 2)

PACKAGES="build-essential autoconf automake libtool pkg-config libevent-dev libssl-dev openssl
libconfig-dev libgtest-dev libsystemd-dev valgrind curl wrk redis-tools netcat-openbsd haproxy
clang libclang-rt-dev"

install_missing() {
    local missing=()
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "quickstart: installing ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

build() {
    if [ ! -x "$SRC/configure" ] || [ "$SRC/configure.ac" -nt "$SRC/configure" ]; then
        (cd "$SRC" && autoreconf -fi)
    fi
    if [ -f "$SRC/config.status" ]; then
        echo "quickstart: the source tree is configured in place; run 'make distclean' first" >&2
        exit 1
    fi
    mkdir -p "$BUILD"
    if [ ! -f "$BUILD/config.status" ]; then
        (cd "$BUILD" && "$SRC/configure" --enable-werror ${EVS_CONFIGURE_FLAGS:-})
    fi
    make -C "$BUILD" -j"$JOBS"
}

check() {
    local rc=0
    make -C "$BUILD" -j"$JOBS" check || rc=$?
    "$SRC/tests/summarize.sh" "$BUILD"
    return $rc
}

run() {
    # The quick-start config finds the plugins built in the build tree.
    export EVSTREAMD_PLUGIN_DIR="$BUILD/plugins"
    echo "quickstart: evstreamd on conf/evstreamd.conf (Ctrl-C stops it)"
    exec "$BUILD/src/daemon/evstreamd" -c "$SRC/conf/evstreamd.conf" "${@}"
}

case "${1:-}" in
run)
    shift
    install_missing
    build
    run "$@"
    ;;
check)
    install_missing
    build
    check
    ;;
*)
    echo "usage: $0 run|check" >&2
    exit 2
    ;;
esac
