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

.PHONY: setup build release lint test run models install bench clean

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

# The measurements of docs/benchmarks.md on this machine (minutes; needs a quiet machine).
bench: release
	bash bench/run.sh

# Real ImageNet VGG-19 weights from torchvision (needs the internet); see docs/models.md.
models: setup
	$(VENV)/bin/pip install -q torch==$(TORCH_VERSION) torchvision==$(TORCHVISION_VERSION) safetensors
	$(VENV)/bin/python models/export_vgg19.py --out models/vgg19.safetensors

# Installs the service: binary, libtorch and the CUDA libraries it links (about 3.6 GB,
# beside the binary so no LD_LIBRARY_PATH is needed), the systemd unit, an example
# configuration (never overwriting one that exists), the models directory, the manual
# page carwatch(1) and completions for bash, zsh and fish.
# `make install DESTDIR=/tmp/stage PREFIX=/usr` stages a package instead.
LIBDIR  := $(PREFIX)/lib/carwatch
# Each has a manual page carwatch-NAME(1) (a unit test checks the list is whole).
SUBCOMMANDS := watch train classify search check alert synth bench completions man 
UNITDIR ?= $(PREFIX)/lib/systemd/system
SITE    := $(shell readlink -f $(VENV)/libtorch 2>/dev/null)/..
install: release
	install -D -m 0755 target/release/carwatch $(DESTDIR)$(PREFIX)/bin/carwatch
	install -d $(DESTDIR)$(LIBDIR)/site-packages/torch
	cp -a $(SITE)/torch/lib $(DESTDIR)$(LIBDIR)/site-packages/torch/
	cp -a $(SITE)/nvidia $(DESTDIR)$(LIBDIR)/site-packages/
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local/|$(PREFIX)/|g' systemd/carwatch.service > $(DESTDIR)$(UNITDIR)/carwatch.service
	install -d $(DESTDIR)$(PREFIX)/share/carwatch/models $(DESTDIR)$(PREFIX)/share/doc/carwatch
	install -m 0644 README.md docs/*.md docs/*.json $(DESTDIR)$(PREFIX)/share/doc/carwatch/
	install -m 0644 models/export_vgg19.py models/quantize_int8.py $(DESTDIR)$(PREFIX)/share/carwatch/
	install -d $(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/bash-completion/completions \
		$(DESTDIR)$(PREFIX)/share/zsh/site-functions $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	target/release/carwatch man > $(DESTDIR)$(PREFIX)/share/man/man1/carwatch.1
	for c in $(SUBCOMMANDS) ; do target/release/carwatch man $$c > $(DESTDIR)$(PREFIX)/share/man/man1/carwatch-$$c.1; done
	target/release/carwatch completions bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/carwatch
	target/release/carwatch completions zsh > $(DESTDIR)$(PREFIX)/share/zsh/site-functions/_carwatch
	target/release/carwatch completions fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/carwatch.fish
	install -d -m 0755 $(DESTDIR)/etc/carwatch
	[ -e $(DESTDIR)/etc/carwatch/carwatch.toml ] || sed 's|/usr/local/|$(PREFIX)/|g' config/service.toml > $(DESTDIR)/etc/carwatch/carwatch.toml
	[ -e $(DESTDIR)/etc/carwatch/alerts.toml ] || install -m 0644 config/service-alerts.toml $(DESTDIR)/etc/carwatch/alerts.toml
	[ -e $(DESTDIR)/etc/carwatch/mqtt-password ] || install -m 0600 /dev/null $(DESTDIR)/etc/carwatch/mqtt-password
	@echo "installed; next: put models in $(PREFIX)/share/carwatch/models, edit /etc/carwatch/*.toml,"
	@echo "then: systemctl daemon-reload && systemctl enable --now carwatch  (docs/operations.md)"

clean:
	$(CARGO) clean
