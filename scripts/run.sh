#!/usr/bin/env bash
# `make run`: the main job on this machine.
set -euo pipefail
bin=target/debug/carwatch
models=$(bash scripts/demo-model.sh "$bin")
echo "run: classifying freshly generated photos with the models in $models" >&2
rm -rf state/demo-check
"$bin" synth dataset --out state/demo-check --per-class 1 --seed 2026 >/dev/null
find state/demo-check -name '*.png' | sort | head -9 | xargs "$bin" classify --models "$models"
