#!/usr/bin/env bash
# `make bench`: every measurement in docs/benchmarks.md, on this machine, in one run,
# carwatch and its Python peer (bench/peer.py) side by side.
# Results (JSON) go to bench/results/<host>-<date>/. Needs the demo model (make run once)
# or trained models in models/.
set -euo pipefail
bin=${CARWATCH:-target/release/carwatch}
out=bench/results/$(hostname)-$(date -u +%Y%m%dT%H%M)
mkdir -p "$out"
models=models; [ -f models/cascade.toml ] || models=models/demo
seconds=${BENCH_SECONDS:-3}
duration=${BENCH_DURATION:-30}

{ lscpu | grep -E 'Model name|^CPU\(s\)|Flags' | cut -c1-200; nproc; free -g | head -2; } > "$out/machine.txt" 2>&1 || true
nvidia-smi -L >> "$out/machine.txt" 2>&1 || true

echo "bench: carwatch model" >&2
"$bin" bench model --seconds "$seconds" --json > "$out/model.json"
echo "bench: carwatch model with the trained cascade on generated photos" >&2
"$bin" bench model --models "$models" --seconds "$seconds" --json > "$out/model-trained.json"
echo "bench: PyTorch model (same machine, same run)" >&2
.venv/bin/python bench/pytorch_vgg19.py --seconds "$seconds" > "$out/pytorch.json"
for n in ${BENCH_CAMERAS:-1 2 4 8 16}; do
  echo "bench: pipeline, $n camera(s)" >&2
  "$bin" bench pipeline --cameras "$n" --fps 2 --duration "$duration" --models "$models" --json > "$out/pipeline-$n.json"
done
echo "bench: pipeline, 4 cameras asking for more than the model can do (saturation), then the Python peer on them" >&2
"$bin" bench pipeline --cameras 4 --fps 8 --duration "$duration" --models "$models" --peer --json > "$out/saturation-4x8.json"
# Intermittent traffic: empty road, a car for 4 s, empty road, another car for 4 s.
traffic="8:; 4:front/audi/a4@0.3,0.3,0.4,0.5; 8:; 4:rear/bmw/x5@0.2,0.3,0.4,0.5"
for motion in off on; do
  echo "bench: intermittent traffic, motion gating $motion" >&2
  flag=; [ "$motion" = on ] && flag=--motion
  "$bin" bench pipeline --cameras 2 --fps 2 --duration 48 --scene "$traffic" $flag --models "$models" --json > "$out/motion-$motion.json"
done
for mode in auto keyframes; do
  echo "bench: pipeline 1080p, decode=$mode" >&2
  "$bin" bench pipeline --cameras 2 --fps 2 --resolution 1080p --decode "$mode" --duration "$duration" --models "$models" --json > "$out/decode-$mode.json"
done
echo "bench: wide views located, tracked and decided against generated truth" >&2
"$bin" bench accuracy --models "$models" --passages 48 --seed 5 --json > "$out/accuracy.json"
for locate in frame motion; do
  echo "bench: pipeline, 4 wide-view cameras, locate=$locate" >&2
  "$bin" bench pipeline --cameras 4 --fps 4 --source-fps 10 --duration "$duration" --locate "$locate" \
    --scene wide:angled/bmw/3-series --models "$models" --json > "$out/wide-$locate.json"
done
echo "bench: per-frame work outside the model, whole-frame RGB against I420 kept" >&2
"$bin" bench frame --json > "$out/frame.json"
echo "bench: 8 cameras at 1 fps (keyframes once a second: decode = auto decodes only those)" >&2
"$bin" bench pipeline --cameras 8 --fps 1 --duration "$duration" --models "$models" --json > "$out/auto-8x1.json"
echo "bench: cameras per machine on generated traffic (carwatch's defaults), then the Python peer on the same counts" >&2
"$bin" bench pipeline --find-max --max-cameras "${BENCH_MAX_CAMERAS:-32}" --fps 2 --duration "$duration" --models "$models" --peer --json > "$out/find-max.json"
echo "bench: sightings store, 1,000,000 rows" >&2
"$bin" bench sightings --rows 1000000 --json > "$out/sightings.json"
echo "bench: results in $out" >&2
