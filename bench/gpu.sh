#!/usr/bin/env bash
# Every GPU check and measurement of docs/benchmarks.md, in one go, on a GPU host (see
# scripts/gpu-bundle.sh for what .gpu/ holds and how to send it). About 7 minutes, at
# most about 11 (each step has a time limit):
#  0. the CUDA unit tests (when scripts/gpu-bundle.sh included them);
#  1. a cascade trained on this device from generated photos over a random VGG-19;
#  2. CUDA fp16 and bf16 answers against CPU fp32 on the same photos (>= 98% agreement);
#  3. `carwatch bench model` (fp16, bf16) and PyTorch eager and torch.compile, same run;
#  4. `carwatch bench pipeline` with NVDEC: 1080p cameras at 2 fps, and saturated.
# Results go to $OUT (the device tool's folder) or bench/results/gpu-<time>/; a failed
# step is logged and the rest still run. CARWATCH_DEVICE=cpu tries the script on a
# machine without a GPU (bf16 and fp32 on the CPU instead, software decoding).
set -uo pipefail
dev=${CARWATCH_DEVICE:-cuda}
bin=${CARWATCH:-.gpu/carwatch}
out=${OUT:-bench/results/gpu-$(date -u +%Y%m%dT%H%M)}
py=${PYTHON:-python3}
mkdir -p "$out"
torchlib=$("$py" -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib
export LD_LIBRARY_PATH=$torchlib:${LD_LIBRARY_PATH:-}
# The bundle has no software decoder: a CPU-only try uses the system's GStreamer.
if [ -d .gpu/gst ] && [ "$dev" != cpu ]; then
  export LD_LIBRARY_PATH=$PWD/.gpu/gst/lib:$LD_LIBRARY_PATH GST_PLUGIN_SYSTEM_PATH=$PWD/.gpu/gst/plugins \
    GST_PLUGIN_SCANNER=$PWD/.gpu/gst/bin/gst-plugin-scanner GST_REGISTRY=/tmp/gst-registry.bin
fi
log=$out/log.txt
step() { # step NAME SECONDS COMMAND... (stdout to $out/NAME)
  local name=$1 secs=$2
  shift 2
  echo "== $name: $*" | tee -a "$log"
  local t0=$SECONDS
  timeout "$secs" "$@" > "$out/$name" 2>> "$log"
  echo "   $name: exit $? after $((SECONDS - t0)) s" | tee -a "$log"
}
{ nvidia-smi -L; nproc; lscpu | grep 'Model name'
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())'
} > "$out/machine.txt" 2>&1
if [ "$dev" = cpu ]; then
  fast=(bf16); decode=cpu; batches=1,2; per_class=3
else
  fast=(fp16 bf16); decode=nvdec; batches=1,8,32,64,128,256; per_class=12
fi

if [ -x .gpu/carwatch-unit-tests ]; then
  # The CUDA unit tests (GPU preprocessing with two batches in flight, fused against
  # plain convolution); they print SKIPPED where there is no CUDA.
  step unit-tests-cuda.txt 120 .gpu/carwatch-unit-tests --nocapture --test-threads 1 gpu_feeder cuda_fused
fi
w=$(mktemp -d /tmp/carwatch-gpu.XXXXXX)  # models and photos: not results
trap 'rm -rf "$w"' EXIT
step backbone.txt 30 "$bin" synth backbone --out "$w/vgg19.safetensors"
step dataset.txt 60 "$bin" synth dataset --out "$w/photos" --per-class "$per_class" --seed 3
step train.txt 90 "$bin" train --data "$w/photos" --backbone "$w/vgg19.safetensors" --out "$w/models" \
  --cache-dir "$w/cache" --device "$dev" --batch 64 --epochs 40
photos=$(find "$w/photos" -name '*.png' | sort | head -n 120)
# shellcheck disable=SC2086
step classify-cpu-fp32.json 60 "$bin" classify --models "$w/models" --device cpu --precision fp32 --json $photos
for p in "${fast[@]}"; do
  # shellcheck disable=SC2086
  step "classify-$dev-$p.json" 45 "$bin" classify --models "$w/models" --device "$dev" --precision "$p" --json $photos
  "$py" - "$out/classify-cpu-fp32.json" "$out/classify-$dev-$p.json" <<'PY' 2>&1 | tee -a "$log"
import json, sys
path = lambda v: (v.get("view"), v.get("make"), v.get("model"))
a, b = ([json.loads(l) for l in open(f) if l.strip()] for f in sys.argv[1:3])
same = sum(path(x) == path(y) for x, y in zip(a, b))
n = max(len(a), 1)
print(f"   agreement {sys.argv[2]}: {same}/{len(a)} = {100 * same / n:.1f}% ({'ok' if len(a) == len(b) and same / n >= 0.98 else 'BELOW 98%'})")
PY
done
args=(); for p in "${fast[@]}"; do args+=(--precision "$p"); done
step model.json 120 "$bin" bench model --device "$dev" "${args[@]}" --batches "$batches" --seconds 1 --json
step pytorch.json 120 "$py" bench/pytorch_vgg19.py --device "$dev" --batches "$batches" --seconds 1 --compile-mode default
step pipeline-8x2-1080p.json 50 "$bin" bench pipeline --cameras 8 --fps 2 --resolution 1080p --decode "$decode" \
  --duration 20 --warmup 5 --models "$w/models" --device "$dev" --json
step pipeline-8x25-1080p.json 50 "$bin" bench pipeline --cameras 8 --fps 25 --resolution 1080p --decode "$decode" \
  --duration 20 --warmup 5 --models "$w/models" --device "$dev" --json
echo "results in $out" | tee -a "$log"
