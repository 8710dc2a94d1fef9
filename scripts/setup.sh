#!/usr/bin/env bash
# Installs everything carwatch needs to build and test on Debian 12 / Ubuntu.
# Idempotent: packages already present are not reinstalled, an existing venv with the
# right torch is kept. Called by `make setup` (and so by `make run` / `make test`).
#
# Usage: scripts/setup.sh VENV TORCH_VERSION
set -euo pipefail

venv=${1:?usage: setup.sh VENV TORCH_VERSION}
torch_version=${2:?usage: setup.sh VENV TORCH_VERSION}

packages=(
  build-essential pkg-config ca-certificates curl python3 python3-venv python3-pip
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
  libgstrtspserver-1.0-dev gstreamer1.0-rtsp
  mosquitto mosquitto-clients openssl systemd
  chromium
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -q
  "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
  # Debian starts a system-wide mosquitto on 1883 on install; carwatch's tests start
  # their own brokers on free ports and `make run` uses the embedded one, so stop it.
  if command -v systemctl >/dev/null 2>&1; then
    "${sudo_cmd[@]}" systemctl disable --now mosquitto >/dev/null 2>&1 || true
  fi
fi

# libtorch from PyPI, pinned: tch's version is built for exactly this libtorch.
have=""
if [ -x "$venv/bin/python" ]; then
  have=$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
fi
if [ "$have" != "$torch_version" ]; then
  echo "setup: installing torch==$torch_version into $venv (large download)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q "torch==$torch_version"
fi
# The Python peer of `bench pipeline --peer` (bench/peer.py): OpenCV's FFmpeg decoder
# and numpy, pinned, beside torch.
if ! "$venv/bin/python" -c 'import cv2, numpy' 2>/dev/null; then
  echo "setup: installing opencv-python-headless and numpy into $venv (bench/peer.py)"
  "$venv/bin/pip" install -q opencv-python-headless==4.12.0.88 numpy==2.2.6
fi
# A stable path to libtorch for .cargo/config.toml, whatever the Python minor version.
torch_dir=$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)
ln -sfn "$torch_dir" "$venv/libtorch"
echo "setup: ok (torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'))"
