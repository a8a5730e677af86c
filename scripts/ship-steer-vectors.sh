#!/usr/bin/env bash
# Learns and calibrates the steering vectors shipped in the crate for the default model
# (src/steer/vectors/MODEL/SPECTRUM.gguf): one per BEAM spectrum, 32 pairs, seed 0, the
# default layers and calibration grid. About 80 s per spectrum on two cores.
#
#   scripts/ship-steer-vectors.sh [MODEL]
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-smollm2-135m}"
cargo build --release --quiet
out="src/steer/vectors/$model"
mkdir -p "$out"
for s in fear-courage sadness-joy distrust-trust negligence-anticipation anger-peace disgust-delight disinterest-fascination; do
  ./target/release/pathos steer train -m "$model" --spectrum "$s" --calibrate -o "$out/$s.gguf"
done
