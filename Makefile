# Two commands for a new user: `make demo` (set up + run the main job) and `make test`.
# VENV may point at an existing environment to reuse it (e.g. make test VENV=/opt/ls-venv).
VENV ?= .venv
PYTHON ?= python3
PY := $(abspath $(VENV))/bin/python
STAMP := $(abspath $(VENV))/.ls_plugins-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
FAIRSEQ_PIN := fairseq-fixed==0.12.3.1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps test test-all demo bench clean

install: $(STAMP)

# torch first (fairseq-fixed builds against it), then fairseq's real deps, then fairseq-fixed
# without build isolation or its own pins, then this package (editable).
$(STAMP): setup.py requirements.txt
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(TORCH_PINS)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-build-isolation --no-deps $(FAIRSEQ_PIN)
	$(PY) -m pip install --no-build-isolation --no-deps -e .
	touch $(STAMP)

# The offline es->en Bible corpus (Debian's SWORD modules) read with diatheke, and the real
# Fashion-MNIST (ls-vision --dataset fashion-mnist).
system-deps:
	@if ! command -v diatheke >/dev/null || ! diatheke -b system -k modulelist 2>/dev/null | grep -q spaRV1909eb \
	    || ! diatheke -b system -k modulelist 2>/dev/null | grep -q engWEB2015eb \
	    || [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq diatheke sword-text-sparv sword-text-web dataset-fashion-mnist; \
	fi

test: install system-deps
	$(PY) -m pytest -q tests

test-all: install system-deps
	$(PY) -m pytest -q -m "" tests

# make demo: the full demo into work/demo (about 40 minutes on 2 CPU cores); make demo QUICK=1:
# every stage at toy size into work/demo-quick (a few minutes; checks the pipeline only).
ifneq ($(filter demo,$(MAKECMDGOALS)),)
ifneq ($(filter-out 0 1,$(QUICK)),)
$(error QUICK: 0 or 1, got $(QUICK))
endif
endif
DEMO_ARGS := $(if $(filter 1,$(QUICK)),work/demo-quick --preset quick,work/demo --preset full)

demo: install system-deps
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) scripts/demo.py $(DEMO_ARGS)

bench: install
	for b in benchmarks/*.py; do PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) $$b || exit 1; done

clean:
	rm -rf work .pytest_cache
