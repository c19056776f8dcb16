#!/bin/sh
# lua_testes.sh: runs Lua 5.4.4's own test suite with tulua as the interpreter.
#
# Usage: LUA_TESTES=/path/to/testes sh tests/lua_testes.sh
#
# LUA_TESTES names a copy of the folder testes/ of the public repository
# lua/lua at tag v5.4.4 (or of the repository itself, holding testes/),
# fetched beforehand: this script downloads nothing, so that CI never does;
# without LUA_TESTES it says so and exits 0. The suite runs in portable mode
# (-e"_U=true" all.lua: no C libraries it would build itself), from inside
# the folder as its files expect, with TULUA (default build/tulua) given by
# an absolute path, since main.lua runs the interpreter again by that name.
# The exit status is tulua's: 0 when all.lua reached "final OK".
set -u

if [ -z "${LUA_TESTES:-}" ]; then
  echo "lua_testes.sh: skipped: LUA_TESTES is not set (point it at testes/ of lua/lua v5.4.4; nothing is downloaded)"
  exit 0
fi
dir=$LUA_TESTES
if [ ! -f "$dir/all.lua" ] && [ -f "$dir/testes/all.lua" ]; then
  dir=$dir/testes
fi
if [ ! -f "$dir/all.lua" ]; then
  echo "lua_testes.sh: no all.lua in $LUA_TESTES (nor in its testes/)" >&2
  exit 2
fi
tulua=${TULUA:-build/tulua}
case $tulua in
  /*) ;;
  *) tulua=$PWD/$tulua ;;
esac
if [ ! -x "$tulua" ]; then
  echo "lua_testes.sh: no tulua binary at $tulua (build it, or set TULUA)" >&2
  exit 2
fi
echo "lua_testes.sh: $tulua -e\"_U=true\" all.lua in $dir"
cd "$dir" && exec "$tulua" -e"_U=true" all.lua
