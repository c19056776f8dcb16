#!/bin/sh
# The second command of the README (and CI's): installs what is missing,
# builds with AddressSanitizer and UndefinedBehaviorSanitizer into
# build-asan/, checks formatting and Lua lint, and runs every test.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
clang-format --dry-run --Werror host/*.c host/*.h bindings/*.c bindings/*.h tests/c/*.c tests/c/*.h
luacheck -q tests/spec scripts lua
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DTULUA_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$(nproc)"
cd build-asan
ctest -j"$(nproc)" --output-on-failure
