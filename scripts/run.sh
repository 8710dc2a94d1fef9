#!/usr/bin/env bash
# `make run`: the watcher on config/carwatch.toml, with the embedded MQTT broker and the
# sample camera (a generated street where cars cross, looped). Builds the synthetic demo
# model first when no trained models are installed. Stop with Ctrl-C.
set -euo pipefail
bin=target/debug/carwatch
models=$(bash scripts/demo-model.sh "$bin")
mkdir -p state
if [ ! -f state/demo-street.mkv ]; then
  echo "run: generating the sample camera, a street where cars cross (state/demo-street.mkv)" >&2
  "$bin" synth clip --out state/demo-street.mkv --width 1280 --height 720 --fps 10 \
    --scene "street; 6:angled/bmw/3-series@-0.25,0.42,0.25,0.44>1,0.42; 2:; 6:front/audi/q7@-0.22,0.46,0.22,0.39>1,0.46; 2:; 6:rear/volvo/xc90@1,0.36,0.2,0.36>-0.2,0.36; 2*1.3:; 6:angled/audi/a4@-0.24,0.42,0.24,0.43>1,0.42; 2:" >&2
fi
echo "run: watching; hits are printed below and published on mqtt://127.0.0.1:1883 (carwatch/#)" >&2
exec "$bin" watch --config config/carwatch.toml --models "$models" --print-hits
