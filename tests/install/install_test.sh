#!/bin/sh
# install_test.sh: `cmake --install` into a temporary prefix, then the examples of scripts/embed built against it (pkg-config, find_package shared and static) and run
# Run by ctest as install/prefix: BUILD is the build folder, SRC the
# source tree, CFLAGS_SAN the sanitizer flags the build used (the examples
# need them to link an instrumented libtulua).
set -eu
: "${BUILD:?}" "${SRC:?}"
CFLAGS_SAN=${CFLAGS_SAN:-}
P=$(mktemp -d /tmp/tulua-install.XXXXXX)
SERVER=
cleanup() {
  [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null
  rm -rf "$P"
}
trap cleanup EXIT
fail() { echo "not ok: $*" >&2; exit 1; }
step() { echo "# $*"; }

step "cmake --install into $P"
cmake --install "$BUILD" --prefix "$P" >/dev/null
L=lib/$(gcc -print-multiarch) # Debian's multiarch folder, as libtulua's
for f in bin/tulua $L/libtulua.a $L/libtulua.so $L/libtulua.so.0.1 include/tulua.h \
    $L/pkgconfig/tulua.pc $L/cmake/tulua/tulua-config.cmake \
    $L/cmake/tulua/tulua-config-version.cmake share/man/man1/tulua.1.gz; do
  [ -e "$P/$f" ] || fail "$f not installed"
done
[ "$(readelf -d "$P/$L/libtulua.so" | sed -n 's/.*SONAME.*\[\(.*\)\]/\1/p')" = libtulua.so.0.1 ] ||
  fail "SONAME is not libtulua.so.0.1"

step "libtulua.so exports exactly the functions tulua.h declares"
sed -n 's/^TULUA_API [^(]*[ *]\(tulua_[a-z_]*\)(.*/\1/p' "$SRC/host/tulua.h" | sort > "$P/declared"
nm -D --defined-only "$P/$L/libtulua.so" | awk '{print $3}' | grep -v '^_' | sort > "$P/exported"
[ -s "$P/declared" ] || fail "no TULUA_API declaration found in tulua.h"
diff "$P/declared" "$P/exported" || fail "exports differ from tulua.h (left: declared, right: exported)"

step "man page and the installed tulua"
zcat "$P/share/man/man1/tulua.1.gz" | grep -q TULUA_DEBUG || fail "man page lacks TULUA_DEBUG"
MANWIDTH=80 man -l "$P/share/man/man1/tulua.1.gz" 2>/dev/null | grep -q "DIFFERENCES FROM LUA5.4" ||
  fail "man page does not render"
[ "$("$P/bin/tulua" -e 'print(require("tulua").now() >= 0)')" = true ] || fail "installed tulua"
"$P/bin/tulua" --help | grep -q TULUA_DEBUG || fail "tulua --help"

step "pkg-config"
export PKG_CONFIG_PATH="$P/$L/pkgconfig"
[ "$(pkg-config --modversion tulua)" = 0.1.0 ] || fail "pkg-config --modversion"
pkg-config --cflags tulua | grep -q -- "-I$P/$L/pkgconfig/../../../include" || fail "pkg-config --cflags"
pkg-config --static --libs tulua | grep -q -- "-luv" || fail "pkg-config --static --libs lacks libuv"

step "building the examples through pkg-config (shared)"
mkdir -p "$P/pc"
make -s -C "$SRC/scripts/embed" O="$P/pc" \
  CFLAGS="-O1 -Wall -Wextra -Werror $CFLAGS_SAN -Wl,-rpath,$P/$L" >/dev/null
ldd "$P/pc/engine" | grep -q "$P/$L/libtulua.so.0.1" || fail "engine does not link the installed libtulua.so"

step "a static link through pkg-config --static (every dependency named in tulua.pc)"
mkdir -p "$P/pcs"
# shellcheck disable=SC2046
cc -O1 $CFLAGS_SAN -o "$P/pcs/uv_tool" "$SRC/scripts/embed/uv_tool.c" $(pkg-config --cflags tulua) \
  "$P/$L/libtulua.a" $(pkg-config --static --libs tulua | sed 's/-ltulua\b//') ||
  fail "static link with pkg-config --static"
timeout 60 "$P/pcs/uv_tool" | grep -q "ok$" || fail "the static uv_tool"

for kind in shared static; do
  step "building the examples through find_package(tulua) ($kind)"
  static=OFF
  [ $kind = static ] && static=ON
  cmake -S "$SRC/scripts/embed" -B "$P/cm-$kind" -DCMAKE_PREFIX_PATH="$P" \
    -DTULUA_USE_STATIC=$static -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_C_FLAGS="$CFLAGS_SAN" -DCMAKE_EXE_LINKER_FLAGS="$CFLAGS_SAN" >/dev/null
  cmake --build "$P/cm-$kind" -j2 >/dev/null
done
ldd "$P/cm-static/engine" | grep -q libtulua && fail "the static engine links libtulua.so"
ldd "$P/cm-shared/engine" | grep -q "$P/$L/libtulua.so.0.1" || fail "the shared engine"

step "a local TCP echo server (python3) for the engine"
python3 -c '
import socket, sys, threading
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4)
print(s.getsockname()[1], flush=True)
def serve(c):
    with c:
        f = c.makefile("rb")
        for line in f: c.sendall(line)
s.settimeout(120)
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
' > "$P/port" &
SERVER=$!
i=0
while [ ! -s "$P/port" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
PORT=$(cat "$P/port")
[ -n "$PORT" ] || fail "the echo server did not start"

for dir in pc cm-shared cm-static; do
  step "$dir/uv_tool: the tool's own loop handed to tulua"
  out=$(timeout 60 "$P/$dir/uv_tool")
  echo "$out" | grep -q "report: ticks while sleeping: yes" || fail "$dir/uv_tool: $out"
  echo "$out" | grep -q "report: child: 0 from a child" || fail "$dir/uv_tool: $out"
  echo "$out" | grep -q "ok$" || fail "$dir/uv_tool: $out"
  printf 'error("boom")\n' > "$P/bad.lua"
  if timeout 60 "$P/$dir/uv_tool" "$P/bad.lua" > "$P/out" 2> "$P/err"; then fail "uv_tool bad.lua succeeded"; fi
  grep -q "uv_tool: script error: .*bad.lua:1: boom" "$P/err" || fail "uv_tool's error: $(cat "$P/err")"

  step "$dir/engine: 150 frames with the SDL dummy video driver"
  out=$(SDL_VIDEODRIVER=dummy timeout 120 "$P/$dir/engine" "$SRC/scripts/embed/game.lua" 150 "$PORT")
  echo "$out"
  echo "$out" | grep -q "^frames 150 entities 10000 " || fail "$dir/engine: $out"
  echo "$out" | grep -q " assets 1 " || fail "$dir/engine assets"
  echo "$out" | grep -q " errors 0$" || fail "$dir/engine errors"
  for c in jobs tcp messages; do
    echo "$out" | grep -q " $c [1-9]" || fail "$dir/engine: no $c"
  done
done

step "engine: a failing task reaches the host's error callback"
printf 'require("tulua").spawn(function() error("lost asset") end)\n' > "$P/fail.lua"
if SDL_VIDEODRIVER=dummy timeout 60 "$P/pc/engine" "$P/fail.lua" 10 > "$P/out" 2> "$P/err"; then
  fail "engine fail.lua succeeded"
fi
grep -q "engine: script error: .*fail.lua:1: lost asset" "$P/err" || fail "engine's error: $(cat "$P/err")"
grep -q "errors 1$" "$P/out" || fail "engine's error count: $(cat "$P/out")"
echo "ok: install/prefix"
