#!/usr/bin/env bash
# Builds a llama.cpp reference (llama-bench, llama-simple, llama-tokenize and libllama)
# from the llama-cpp-python source package, which vendors llama.cpp, into a cache
# directory outside the repository. Used for side-by-side benchmarks and test fixtures;
# nothing it builds is committed. Idempotent: does nothing if the binaries exist.
#
#   scripts/build-llamacpp.sh            # prints the bin directory on its last line
#   scripts/build-llamacpp.sh --server   # also llama-server (for the remote backend)
#   PATHOS_LLAMACPP_DIR=/some/dir scripts/build-llamacpp.sh
set -euo pipefail
DIR="${PATHOS_LLAMACPP_DIR:-$HOME/.cache/pathos/llama.cpp}"
BIN="$DIR/build/bin"
SERVER=OFF
TARGETS=(llama-bench llama-simple llama-tokenize llama)
if [[ "${1:-}" == "--server" ]]; then
  SERVER=ON
  TARGETS+=(llama-server)
fi
if [[ -x "$BIN/llama-bench" && -x "$BIN/llama-tokenize" && -x "$BIN/llama-simple" ]] \
  && [[ $SERVER == OFF || -x "$BIN/llama-server" ]]; then
  echo "$BIN"; exit 0
fi
mkdir -p "$DIR"
cd "$DIR"
if [[ ! -d src ]]; then
  tmp=$(mktemp -d)
  python3 -m pip download --no-deps --disable-pip-version-check -q llama-cpp-python -d "$tmp" >&2
  tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$tmp"
  mv "$tmp"/llama_cpp_python-*/vendor/llama.cpp src
  rm -rf "$tmp"
fi
if [[ ! -x venv/bin/cmake ]]; then
  python3 -m venv venv
  venv/bin/pip install -q --disable-pip-version-check cmake ninja >&2
fi
export PATH="$DIR/venv/bin:$PATH"
cmake -S src -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER="$SERVER" -DBUILD_SHARED_LIBS=ON >&2
cmake --build build -j "$(nproc)" --target "${TARGETS[@]}" >&2
echo "$BIN"
