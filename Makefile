# carwatch: two commands on a fresh Debian 12 / Ubuntu machine.
#   make run    the watcher on config/carwatch.toml (builds a synthetic demo model first
#               when no trained models are installed)
#   make test   everything CI checks: formatting, clippy, unit and integration tests
#
# The one place the libtorch version is set: tch 0.24 is built for exactly torch 2.11.0.
# torchvision (only for `make models`) is the release paired with that torch.
TORCH_VERSION       := 2.11.0
TORCHVISION_VERSION := 0.26.0
VENV          := .venv
CARGO         ?= cargo
PREFIX        ?= /usr/local

.PHONY: setup build release lint test run models clean

# Installs system packages and the torch venv (idempotent; quick when nothing is missing).
setup:
	bash scripts/setup.sh $(VENV) $(TORCH_VERSION)

build: setup
	$(CARGO) build

release: setup
	$(CARGO) build --release

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

test: lint
	$(CARGO) test -- --test-threads=2

run: build
	bash scripts/run.sh

# Real ImageNet VGG-19 weights from torchvision (needs the internet); see docs/models.md.
models: setup
	$(VENV)/bin/pip install -q torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION) safetensors
	$(VENV)/bin/python models/export_vgg19.py --out models/vgg19.safetensors

clean:
	$(CARGO) clean
