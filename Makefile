# AMC Service. Quick start: `make demo`, `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSSTAMP := $(VENV)/.system-deps
# Debian packages the tests use for real: the standard adb client, libusb for adb-shell USB, chromium, and
# postgresql (the store's tests start a PostgreSQL server of their own: tests/pg.py).
DEBS := adb libusb-1.0-0 chromium postgresql

.PHONY: install system-deps demo test test-slow bench lint serve clean images

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned to the CPU build on local disk, so no other package pulls a CUDA build.
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	@echo ">> installing torch 2.13.0 (CPU) and the project into $(VENV)"
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,tflite,farm,postgres]'
	@touch $@

system-deps: $(SYSSTAMP)
$(SYSSTAMP): Makefile | $(BIN)/python
	@missing=""; \
	command -v adb >/dev/null || missing="$$missing adb"; \
	ldconfig -p | grep -q libusb-1.0 || missing="$$missing libusb-1.0-0"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo ">> apt-get install$$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  else \
	    echo "Missing Debian packages:$$missing. Run: sudo apt-get install$$missing"; exit 1; \
	  fi; \
	fi
	@touch $@

install: $(STAMP) $(SYSSTAMP)

demo: install
	$(BIN)/amc compress --model demo-cnn --data digits --target flops=0.5 --strategy ddpg \
	  --compare --out runs/demo --seed 0

test: install
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: install
	$(BIN)/python -m pytest -m slow -q

bench: install
	$(BIN)/python -m benchmarks.run

# ruff; the layer contracts ([tool.importlinter] in pyproject.toml); mypy over the packages ([tool.mypy]).
lint: install
	$(BIN)/ruff check compressor profiler device_agent server tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

serve: install
	$(BIN)/amc serve

# The orchestrator and device-host images (docker/README.md), built from the Dockerfiles as they stand with
# buildah (no Docker engine here; ../shared/tools/oci), then smoke-tested (docker/smoke.sh). Needs root: the
# local python base image is made once if missing. TORCH_INDEX_URL empty: torch from pip's configuration.
images: OCI := ../shared/tools/oci
images: TORCH_INDEX_URL ?=
images:
	@set -e; mkdir -p runs/images; \
	if ! command -v buildah >/dev/null || ! buildah inspect --type image docker.io/library/python:3.11-slim-bookworm >/dev/null 2>&1; then \
	  [ "$$(id -u)" = 0 ] || { echo "!! images: the base images are missing and $(OCI)/base.sh needs root"; exit 1; }; \
	  echo ">> images: making the local base images ($(OCI)/base.sh)"; \
	  $(OCI)/base.sh || { echo "!! images: $(OCI)/base.sh failed"; exit 1; }; \
	fi; \
	for image in server device-host; do \
	  start=$$SECONDS; log=runs/images/build-$$image.log; \
	  echo ">> images: building localhost/amc-$$image from docker/Dockerfile.$$image (log: $$log)"; \
	  $(OCI)/build.sh --layers --format docker --ignorefile docker/Dockerfile.$$image.dockerignore \
	    -f docker/Dockerfile.$$image -t localhost/amc-$$image:latest --build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL) . \
	    >$$log 2>&1 || { tail -n 30 $$log; echo "!! images: building docker/Dockerfile.$$image failed (log: $$log)"; exit 1; }; \
	  echo ">> images: built localhost/amc-$$image in $$((SECONDS - start)) s"; \
	done; \
	start=$$SECONDS; \
	docker/smoke.sh localhost/amc-server:latest localhost/amc-device-host:latest \
	  || { echo "!! images: the smoke test failed (above: which step)"; exit 1; }; \
	echo ">> images: smoke test passed in $$((SECONDS - start)) s"

clean:
	rm -rf runs .pytest_cache
