#!/bin/sh
# bench/setup.sh - install what bench/run needs (Debian/Ubuntu, as root).
set -e
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y \
    build-essential autoconf automake libtool pkg-config libevent-dev \
    libssl-dev openssl libconfig-dev libgtest-dev \
    nginx libnginx-mod-stream redis-server redis-tools wrk \
    python3 python3-uvloop gnuplot-nox util-linux procps valgrind
# Packages start their services on install; the benchmark runs its own.
$SUDO systemctl stop nginx redis-server 2>/dev/null || true
$SUDO service nginx stop 2>/dev/null || true
$SUDO service redis-server stop 2>/dev/null || true
