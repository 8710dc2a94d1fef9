#!/usr/bin/env bash
# Prints the models directory `make run` should use, building the synthetic demo model
# first when no trained models are installed.
#
# Real models: models/cascade.toml (written by `carwatch train`). Without them, this
# trains heads on generated vehicle photos over a randomly initialised VGG-19 and stores
# them in models/demo, labelled synthetic in their manifest. Idempotent: an existing
# demo model is reused.
set -euo pipefail
bin=${1:?usage: demo-model.sh CARWATCH_BINARY}

if [ -f models/cascade.toml ]; then
  echo models
  exit 0
fi

demo=models/demo
if [ ! -f "$demo/cascade.toml" ]; then
  {
    echo "demo: no trained models in models/ (see docs/models.md)."
    echo "demo: building a SYNTHETIC demo model in $demo: random VGG-19 backbone,"
    echo "demo: heads trained on generated vehicle images. It recognises only those."
    echo "demo: an int8 copy of the backbone is made for the CPU (docs/models.md)."
  } >&2
  mkdir -p "$demo" state
  "$bin" synth backbone --out "$demo/vgg19-random.safetensors" >&2
  "$bin" synth dataset --out state/demo-photos --per-class 24 --seed 1 --size 224 >&2
  "$bin" train --data state/demo-photos --backbone "$demo/vgg19-random.safetensors" \
    --out "$demo" --cache-dir state/feature-cache --epochs 40 --int8 \
    --notice "SYNTHETIC DEMO MODEL: random VGG-19 backbone, heads trained on generated images; predictions mean nothing for real vehicles" >&2
fi
echo "$demo"
