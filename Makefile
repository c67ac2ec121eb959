# Two commands from a fresh clone: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   := $(or $(EDGEKIT_DATA),/usr/share/datasets/fashion-mnist)

.PHONY: demo test test-base setup data bench clean

demo: setup data
	$(BIN)/edgekit demo -o demo-out

test: setup data test-base
	$(BIN)/python -m pytest -q

# A second venv with only the base install (no TensorFlow): what a device gets. The wheel is built
# by the dev venv's setuptools (--no-build-isolation --no-index: the build backend is never
# downloaded); the base dependencies are fetched the first time only, when that venv is new.
BASE   := .venv-base
WHEELS := build/wheels
test-base: setup
	test -x $(BASE)/bin/python || $(PYTHON) -m venv $(BASE)
	rm -rf $(WHEELS)
	$(BIN)/pip wheel --quiet --no-deps --no-build-isolation --no-index -w $(WHEELS) .
	$(BASE)/bin/pip install --quiet --force-reinstall --no-deps $(WHEELS)/edgekit-*.whl
	$(BASE)/bin/pip install --quiet $(WHEELS)/edgekit-*.whl
	$(BASE)/bin/python tests/base_install/check.py

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[train,dev]"
	touch $(STAMP)

# Debian's dataset-fashion-mnist: installed when missing and apt is usable (root or sudo).
data:
	@if [ -f "$(DATA)/t10k-labels-idx1-ubyte.gz" ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ]; then \
	    echo "Installing Debian's dataset-fashion-mnist"; \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null && exit 0; \
	  fi; \
	fi; \
	echo "Fashion-MNIST not found in $(DATA). Install Debian's dataset-fashion-mnist, or set EDGEKIT_DATA to a folder with its four .gz files." >&2; \
	exit 1

bench: setup data
	$(BIN)/python bench/mc_speed.py

clean:
	rm -rf $(VENV) $(BASE) demo-out build *.egg-info
