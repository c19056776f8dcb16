#!/bin/sh
# deb_test.sh: `cpack -G DEB` of the build (tulua, and tulua-mpi with MPI's transport), their control data checked; where dpkg can (root, no tulua installed yet) installed with apt, smoke-tested and removed
# Run by ctest as install/deb: BUILD is the build folder, SRC the source
# tree, CFLAGS_SAN the build's sanitizer flags (for the example built
# against the installed package). The install part
# holds a lock so that two builds' tests do not install at once, and the
# exit trap removes the package whatever happened.
set -eu
: "${BUILD:?}" "${SRC:?}"
D=$(mktemp -d /tmp/tulua-deb.XXXXXX)
INSTALLED=
cleanup() {
  if [ -n "$INSTALLED" ]; then
    dpkg --purge tulua-mpi tulua >/dev/null 2>&1 || true
  fi
  rm -rf "$D"
}
trap cleanup EXIT
fail() { echo "not ok: $*" >&2; exit 1; }
step() { echo "# $*"; }

step "cpack -G DEB"
(cd "$BUILD" && timeout 300 cpack -G DEB -B "$D" >"$D/cpack.log" 2>&1) || { cat "$D/cpack.log"; fail "cpack"; }
DEB=$(ls "$D"/tulua_*_*.deb)
[ -f "$DEB" ] || fail "no .deb made"
depends=$(dpkg-deb -f "$DEB" Depends)
echo "# Depends: $depends"
for dep in liblua5.4-0 libuv1 libedit2 libc6; do
  echo "$depends" | grep -q "$dep" || fail "Depends lacks $dep"
done
# MPI's transport is a package of its own: tulua does not pull Open MPI in
! echo "$depends" | grep -q "mpi" || fail "tulua depends on MPI"
MPIDEB=
if [ -f "$BUILD/tulua_mpi.so" ]; then
  MPIDEB=$(ls "$D"/tulua-mpi_*_*.deb)
  [ -f "$MPIDEB" ] || fail "no tulua-mpi .deb made"
  mdepends=$(dpkg-deb -f "$MPIDEB" Depends)
  echo "# tulua-mpi Depends: $mdepends"
  echo "$mdepends" | grep -q "tulua (= " || fail "tulua-mpi does not depend on its tulua"
  echo "$mdepends" | grep -q "libopenmpi" || fail "tulua-mpi lacks libopenmpi"
  [ "$(dpkg-deb -c "$MPIDEB" | grep -c '\.so$')" = 1 ] &&
    dpkg-deb -c "$MPIDEB" | grep -q " ./usr/lib/tulua/tulua_mpi.so$" || fail "tulua-mpi's files"
  ! dpkg-deb -c "$DEB" | grep -q "tulua_mpi.so" || fail "tulua holds tulua_mpi.so"
fi
dpkg-deb -c "$DEB" > "$D/files"
for f in ./usr/bin/tulua ./usr/include/tulua.h ./usr/lib/x86_64-linux-gnu/libtulua.a \
    ./usr/lib/x86_64-linux-gnu/libtulua.so.0.1.0 ./usr/lib/x86_64-linux-gnu/pkgconfig/tulua.pc \
    ./usr/lib/x86_64-linux-gnu/cmake/tulua/tulua-config.cmake ./usr/share/man/man1/tulua.1.gz; do
  grep -q " $f" "$D/files" || fail "$f not in the package"
done
dpkg-deb -e "$DEB" "$D/control"
grep -q "update-alternatives --install /usr/bin/lua lua-interpreter /usr/bin/tulua 10" \
  "$D/control/postinst" || fail "postinst"

if [ "$(id -u)" != 0 ] || ! command -v dpkg >/dev/null || ! command -v apt-get >/dev/null; then
  echo "ok: install/deb (built and checked; not installed: needs root and dpkg)"
  exit 0
fi
exec 9>/tmp/tulua-deb-test.lock
flock -w 120 9 || fail "another test holds /tmp/tulua-deb-test.lock"
if dpkg -s tulua >/dev/null 2>&1; then
  echo "ok: install/deb (built and checked; not installed: a tulua package is installed already)"
  exit 0
fi

step "apt-get install ./$(basename "$DEB") (its dependencies are installed: nothing downloads)"
INSTALLED=1
timeout 120 apt-get install -y -q "$DEB" > "$D/apt.log" 2>&1 || { cat "$D/apt.log"; fail "apt-get install"; }
[ "$(/usr/bin/tulua -e 'print(require("tulua").now() >= 0, _VERSION)')" = "true	Lua 5.4" ] ||
  fail "/usr/bin/tulua"
[ "$(/usr/bin/tulua -v)" = "$(lua5.4 -v 2>/dev/null || /usr/bin/tulua -v)" ] || fail "tulua -v"
if [ -n "$MPIDEB" ]; then
  step "without tulua-mpi, MPI pools say what is missing; with it, they load"
  /usr/bin/tulua -e 'print(select(2, pcall(require, "concurrent.futures.mpi")))' 2>&1 |
    grep -q "cannot load the MPI transport (tulua_mpi.so)" || fail "tulua without tulua-mpi"
  timeout 120 apt-get install -y -q "$MPIDEB" > "$D/apt.log" 2>&1 || { cat "$D/apt.log"; fail "apt-get install tulua-mpi"; }
  [ "$(/usr/bin/tulua -e 'print(type(require("concurrent.futures.mpi").MPIPoolExecutor))')" = function ] ||
    fail "tulua-mpi's transport does not load"
fi
update-alternatives --query lua-interpreter > "$D/alt"
grep -q "^Alternative: /usr/bin/tulua" "$D/alt" || fail "no lua-interpreter alternative"
tp=$(sed -n '/^Alternative: \/usr\/bin\/tulua/,/^$/s/^Priority: //p' "$D/alt")
lp=$(sed -n '/^Alternative: \/usr\/bin\/lua5.4/,/^$/s/^Priority: //p' "$D/alt")
echo "# priorities: tulua $tp, lua5.4 ${lp:-none}"
[ -z "$lp" ] || [ "$tp" -lt "$lp" ] || fail "tulua's priority $tp is not below lua5.4's $lp"
man -w tulua >/dev/null 2>&1 || fail "man tulua"
[ "$(pkg-config --modversion tulua)" = 0.1.0 ] || fail "pkg-config tulua"
step "find_package(tulua) finds the package in /usr"
cmake -S "$SRC/scripts/embed" -B "$D/cm" -DCMAKE_C_FLAGS="${CFLAGS_SAN:-}" \
  -DCMAKE_EXE_LINKER_FLAGS="${CFLAGS_SAN:-}" > "$D/cm.log" 2>&1 || { cat "$D/cm.log"; fail "cmake"; }
cmake --build "$D/cm" --target uv_tool > "$D/cm.log" 2>&1 || { cat "$D/cm.log"; fail "cmake --build"; }
ldd "$D/cm/uv_tool" | grep -q "=> /\(usr/\)\{0,1\}lib/.*libtulua.so.0.1" || fail "uv_tool does not link /usr's libtulua"
timeout 60 "$D/cm/uv_tool" | grep -q "ok$" || fail "uv_tool against the package"

step "apt-get remove"
timeout 120 apt-get remove -y -q --purge tulua ${MPIDEB:+tulua-mpi} > "$D/apt.log" 2>&1 ||
  { cat "$D/apt.log"; fail "apt-get remove"; }
INSTALLED=
[ ! -e /usr/bin/tulua ] || fail "/usr/bin/tulua left behind"
if update-alternatives --query lua-interpreter 2>/dev/null | grep -q "^Alternative: /usr/bin/tulua"; then
  fail "the alternative is left behind"
fi
echo "ok: install/deb"
