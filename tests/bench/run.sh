#!/bin/sh
# Runs the peer ruler (../shared/bench) against this build of tulua, e.g.
#   sh tests/bench/run.sh w2_yield tulua luv_co node
# Needs a Release build in build/ (sh scripts/setup.sh) and the ruler's own
# setup (sh ../shared/bench/setup.sh) for the other peers.
set -eu
here=$(cd "$(dirname "$0")/../.." && pwd)
ruler=${RULER:-$here/../shared/bench}
TULUA=${TULUA:-$here/build/tulua} exec "$ruler/run.sh" "$@"
