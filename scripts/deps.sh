#!/bin/sh
# Installs the Debian 12 packages tulua builds, tests and demos with, when any
# is missing. Runs apt-get as root, or through sudo otherwise.
set -eu
PKGS="cmake gcc make pkg-config liblua5.4-dev lua5.4 libuv1-dev lua-busted
lua-check lua-filesystem valgrind clang-format libedit-dev tmux
curl netcat-openbsd redis-server wrk python3 clang"
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
