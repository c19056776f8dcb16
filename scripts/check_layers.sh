#!/bin/sh
# Fails when host/ reaches up into bindings/: a file of host/ that includes
# a header of bindings/ (or anything through "../"), or names a binding
# module's opener (luaopen_tulua_*). host/ knows of the layer above only
# tulua__preload_bindings, which bindings/modules.c defines.
set -u
cd "$(dirname "$0")/.."
status=0
fail() {
  echo "check_layers: $1" >&2
  status=1
}
for f in host/*.c host/*.h; do
  if grep -n '#[[:space:]]*include[[:space:]]*"\.\./' "$f"; then
    fail "$f includes a file through \"../\" (host/ is on the include path)"
  fi
  for h in bindings/*.h; do
    name=$(basename "$h")
    if grep -n "#[[:space:]]*include[[:space:]]*[\"<]\([^\">]*/\)\{0,1\}$name[\">]" "$f" |
      grep -v "^[0-9]*:.*<$name>"; then
      fail "$f includes $name of bindings/"
    fi
  done
  if grep -n 'luaopen_tulua_' "$f"; then
    fail "$f names a binding module's opener (list it in bindings/modules.c)"
  fi
done
exit $status
