#!/bin/sh
# The first command of the README: installs what is missing, builds tulua in
# Release into build/ and runs the talk tour.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
./build/tulua scripts/talk/tour.lua
