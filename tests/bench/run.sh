#!/bin/sh
# Runs the peer ruler (../shared/bench) against this build of tulua, with the
# peers and workloads of tests/bench/peers/ added to the ruler's, e.g.
#   sh tests/bench/run.sh w2_yield tulua tulua_asyncio luv_co node
#   sh tests/bench/run.sh q1_queue
#   sh tests/bench/run.sh setup        # the ruler's setup.sh, in the working copy
# The ruler stays untouched (it is read-only here): this lays a working copy of
# it in $BENCH_TREE (default build-ruler/, git-ignored), copies
# tests/bench/peers/ over its peers/ (a file of ours may not replace one of the
# ruler's), teaches the copy's run.sh the workloads only we have (q1_queue: the
# peer prints its own RESULT line, pinned, like W2) and summarize.py their
# columns, then runs the copy's run.sh: the same rounds, pinning, CPU probes,
# time limits and tables as the ruler's. Raw results: $BENCH_TREE/results/.
# Needs a Release build in build/ (sh scripts/setup.sh) or TULUA=path/to/tulua.
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
ours=$here/tests/bench
ruler=${RULER:-$here/../shared/bench}
tree=${BENCH_TREE:-$here/build-ruler}
TULUA=${TULUA:-$here/build/tulua}
case $TULUA in /*) ;; */*) TULUA=$(pwd)/$TULUA ;; esac # the ruler runs from its own folder

die() { echo "tests/bench/run.sh: $*" >&2; exit 2; }
[ -x "$ruler/run.sh" ] || die "no ruler at $ruler (set RULER=path/to/shared/bench)"
for f in "$ours"/peers/*/*; do
  rel=${f#"$ours"/}
  [ ! -e "$ruler/$rel" ] || die "$rel would replace the ruler's own peer: rename it"
done

mkdir -p "$tree/tools"
(cd "$tree" && rm -rf peers lib tools/* run.sh setup.sh Makefile package.json package-lock.json)
for f in run.sh setup.sh Makefile package.json package-lock.json lib tools peers; do
  cp -pR "$ruler/$f" "$tree/"
done
cp -pR "$ours/peers/." "$tree/peers/"
cp -p "$ruler/tools/summarize.py" "$tree/tools/ruler_summarize.py"
cp -p "$ours/tools/summarize.py" "$tree/tools/summarize.py"
chmod -R u+w "$tree"

# Workloads that only tests/bench/peers/ has: add them to the copy's workload
# list, each run like W2 (pinned; the peer prints its own RESULT line).
extra="" fns=""
for d in "$ours"/peers/*/; do
  w=$(basename "$d")
  [ -d "$ruler/peers/$w" ] || { extra="$extra $w"; fns="$fns run_$w() { run_simple yes; };"; }
done
if [ -n "$extra" ]; then
  fns=${fns# }
  sed -e "s/^ALL_WORKLOADS=\"\(.*\)\"\$/ALL_WORKLOADS=\"\1$extra\"/" \
    -e "/^run_w2_yield() /a\\
$fns" "$ruler/run.sh" >"$tree/run.sh"
  for w in $extra; do
    if ! grep -q "^ALL_WORKLOADS=\".* ${w}[ \"]" "$tree/run.sh" ||
      ! grep -q "^run_$w() { run_simple yes; }" "$tree/run.sh"; then
      die "cannot add $w to the ruler's run.sh (has it changed?): see tests/bench/run.sh"
    fi
  done
fi

# setup: the ruler's setup.sh in the copy (Debian packages, python3-uvloop
# among them; npm ci and make into the copy, since the ruler is read-only).
if [ "${1-}" = setup ]; then exec bash "$tree/setup.sh"; fi
[ ! -d "$ruler/node_modules" ] || [ -e "$tree/node_modules" ] || ln -s "$ruler/node_modules" "$tree/node_modules"
TULUA=$TULUA exec bash "$tree/run.sh" "$@"
