#!/bin/sh
# Installs the Debian 12 packages tulua builds, tests and demos with, when any
# is missing. Runs apt-get as root, or through sudo otherwise.
set -eu
# The build: Lua, libuv, libedit; OpenSSL 3 (tulua.tls), llhttp's C sources
# (tulua.http), wslay (WebSocket framing), zlib (gzip bodies), Open MPI (the
# cluster executor), SDL2 (the engine example).
# The tests' real peers: curl, openssl, nginx, redis, Python's servers and
# websockets, mpiexec, luarocks, chromium (renders the timeline SVG).
PKGS="cmake gcc make pkg-config liblua5.4-dev lua5.4 libuv1-dev lua-busted
lua-check lua-filesystem valgrind clang-format libedit-dev tmux
curl netcat-openbsd redis-server wrk python3 clang
libssl-dev openssl node-llhttp libwslay-dev zlib1g-dev
libopenmpi-dev openmpi-bin libsdl2-dev
nginx-light python3-websockets python3-aiohttp python3-mpi4py
luarocks lua-luv lua-luv-dev libxml2-utils chromium dpkg-dev file"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
echo "installing:$missing" >&2
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
