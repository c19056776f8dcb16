#!/bin/sh
# The second command of the README (and CI's): installs what is missing,
# checks that host/ names nothing of bindings/ (check_layers.sh), builds
# in Release into build-release/ (as the first command does: the optimiser
# finds warnings, errors under -Werror, that a Debug build does not), builds
# with AddressSanitizer and UndefinedBehaviorSanitizer into build-asan/,
# checks formatting and Lua lint, and runs every test, then fuzzes the
# transfer format and the HTTP request parser for 15 seconds each
# (build-fuzz/, clang).
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
sh scripts/check_layers.sh
clang-format --dry-run --Werror host/*.c host/*.h bindings/*.c bindings/*.h tests/c/*.c tests/c/*.h tests/fuzz/*.c scripts/embed/*.c
luacheck -q tests/spec tests/fuzz scripts lua
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-release -j"$(nproc)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DTULUA_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$(nproc)"
cd build-asan
ctest -j"$(nproc)" --output-on-failure
cd ..
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DTULUA_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-fuzz --target fuzz_transfer -j"$(nproc)"
rm -rf build-fuzz/corpus build-fuzz/artifacts
mkdir -p build-fuzz/artifacts
cp -R tests/fuzz/corpus build-fuzz/corpus
build-fuzz/fuzz_transfer -max_total_time=15 -artifact_prefix=build-fuzz/artifacts/ build-fuzz/corpus
# the request path of tulua.http (llhttp and the head serialiser), 15 s
cmake --build build-fuzz --target fuzz_http -j"$(nproc)"
rm -rf build-fuzz/corpus_http
cp -R tests/fuzz/corpus_http build-fuzz/corpus_http
build-fuzz/fuzz_http -max_total_time=15 -artifact_prefix=build-fuzz/artifacts/ build-fuzz/corpus_http
