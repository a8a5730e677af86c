#!/usr/bin/env bash
# Regenerates tests/fixtures/{tokenizer,greedy,template}/*.json from an independent
# reference: llama.cpp (built by build-llamacpp.sh, outside the repository) for token ids
# and greedy tokens, Python's jinja2 for chat templates. Needs the three models in the
# pathos cache (`pathos models fetch NAME`), or PATHOS_MODEL_DIR pointing at NAME.gguf files.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$("$here/build-llamacpp.sh" | tail -n 1)"
dir="$(dirname "$(dirname "$bin")")"
ref="$dir/reference"
if [[ ! -x "$ref" || "$here/fixtures/reference.cpp" -nt "$ref" ]]; then
  libdir="$(dirname "$(find "$dir/build" -name 'libllama.so' | head -n 1)")"
  g++ -O2 -std=c++17 -I"$dir/src/include" -I"$dir/src/ggml/include" \
    "$here/fixtures/reference.cpp" -o "$ref" -L"$libdir" -L"$dir/build/bin" -lllama -lggml -lggml-base \
    -Wl,-rpath,"$libdir" -Wl,-rpath,"$dir/build/bin"
fi
models="${PATHOS_MODEL_DIR:-${PATHOS_HOME:-$HOME/.cache/pathos}/models}"
python3 "$here/fixtures/make_fixtures.py" "$ref" "$models"
