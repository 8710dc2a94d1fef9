#!/usr/bin/env bash
# `make run`: the watcher on config/carwatch.toml, with the embedded MQTT broker and the
# sample camera (a generated clip, looped). Builds the synthetic demo model first when
# no trained models are installed. Stop with Ctrl-C.
set -euo pipefail
bin=target/debug/carwatch
models=$(bash scripts/demo-model.sh "$bin")
mkdir -p state
if [ ! -f state/demo-clip.mkv ]; then
  echo "run: generating the sample camera clip state/demo-clip.mkv" >&2
  "$bin" synth clip --out state/demo-clip.mkv --width 480 --height 384 --fps 10 \
    --scene "6:front/bmw/3-series; 4:; 6:angled/audi/q7; 4:; 6:rear/volvo/xc90; 4:; 6:angled/bmw/3-series; 4:" >&2
fi
echo "run: watching; hits are printed below and published on mqtt://127.0.0.1:1883 (carwatch/#)" >&2
exec "$bin" watch --config config/carwatch.toml --models "$models" --print-hits
