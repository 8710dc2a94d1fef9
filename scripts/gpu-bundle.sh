#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for bench/gpu.sh on a GPU host that has PyTorch and the
# NVIDIA driver but no cargo, GStreamer or network: the release binary and the unit
# tests, stripped, and a
# GStreamer bundle with NVDEC (nvcodec), the RTSP client and server side, and x264 for
# the synthetic cameras. Software H.264 decoding (libav, about 200 MiB) is left out to
# stay under the device tool's 64 MiB carry limit, so `decode = "cpu"` fails there.
#   bash scripts/gpu-bundle.sh && device run --carry .gpu "bash bench/gpu.sh"
set -euo pipefail
cargo build --release
rm -rf .gpu
mkdir -p .gpu
cp target/release/carwatch .gpu/carwatch
strip .gpu/carwatch
# The library's unit tests, whose CUDA tests run only where there is a GPU.
tests=$(cargo test --release --lib --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | head -n 1)
cp "$tests" .gpu/carwatch-unit-tests
strip .gpu/carwatch-unit-tests
../shared/tools/gst-bundle .gpu/gst coreelements app typefindfunctions playback isomp4 matroska \
  videoparsersbad nvcodec videoconvertscale videorate videotestsrc rtsp rtp rtpmanager udp tcp x264 \
  --lib .gpu/carwatch
du -sh .gpu
