# Two commands from a fresh clone: `make demo` and `make test`. Each sets up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA   := $(or $(EDGEKIT_DATA),/usr/share/datasets/fashion-mnist)

.PHONY: demo test test-base setup data bench clean

demo: setup data
	$(BIN)/edgekit demo -o demo-out

test: setup data test-base native native-arm64
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

# ---- The native runtime (runtime/c, docs/native.md): a C library and `edgekit-run` over LiteRT's C
# API in the installed wheel's libLiteRt.so (found through Python, linked with an rpath to it).
.PHONY: native native-symbols native-arm64 native-arm64-tools
NATIVE       := build/native
NATIVE_CC    ?= cc
NATIVE_WARN  := -std=c11 -Wall -Wextra -Werror -pedantic
NATIVE_LIB   := runtime/c/edgekit.c runtime/c/ek_format.c runtime/c/ek_json.c runtime/c/ek_sha256.c
NATIVE_TOOL  := runtime/c/edgekit_run.c runtime/c/npy.c
NATIVE_HDRS  := runtime/c/edgekit.h runtime/c/ek_internal.h runtime/c/litert_c.h runtime/c/npy.h
LITERT_DIR    = $(shell $(BIN)/python -c "import ai_edge_litert, os; print(os.path.dirname(ai_edge_litert.__file__))")
NATIVE_LINK   = -L$(LITERT_DIR) -l:libLiteRt.so -Wl,-rpath,$(LITERT_DIR) -lm

native: setup $(NATIVE)/edgekit-run $(NATIVE)/libedgekit.so $(NATIVE)/libedgekit.a $(NATIVE)/asan/edgekit-run native-symbols

$(NATIVE)/edgekit-run: $(NATIVE_LIB) $(NATIVE_TOOL) $(NATIVE_HDRS) $(STAMP)
	@mkdir -p $(@D)
	$(NATIVE_CC) $(NATIVE_WARN) -O2 -o $@ $(NATIVE_LIB) $(NATIVE_TOOL) $(NATIVE_LINK)

$(NATIVE)/libedgekit.so: $(NATIVE_LIB) $(NATIVE_HDRS) $(STAMP)
	@mkdir -p $(@D)
	$(NATIVE_CC) $(NATIVE_WARN) -O2 -fPIC -shared -Wl,--no-undefined -o $@ $(NATIVE_LIB) $(NATIVE_LINK)

$(NATIVE)/libedgekit.a: $(NATIVE_LIB) $(NATIVE_HDRS)
	@mkdir -p $(@D)/obj
	for f in $(NATIVE_LIB); do $(NATIVE_CC) $(NATIVE_WARN) -O2 -c $$f -o $(@D)/obj/$$(basename $$f .c).o || exit 1; done
	rm -f $@ && ar rcs $@ $(patsubst runtime/c/%.c,$(@D)/obj/%.o,$(NATIVE_LIB))

# The same tool under AddressSanitizer + UBSan (the tests run the corruption corpus through it), with
# the portable SHA-256 (the release build uses the CPU's SHA instructions where it has them).
$(NATIVE)/asan/edgekit-run: $(NATIVE_LIB) $(NATIVE_TOOL) $(NATIVE_HDRS) $(STAMP)
	@mkdir -p $(@D)
	$(NATIVE_CC) $(NATIVE_WARN) -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all -DEK_NO_SHA_ACCEL \
	  -o $@ $(NATIVE_LIB) $(NATIVE_TOOL) $(NATIVE_LINK)

# Every LiteRt function runtime/c/litert_c.h declares must be exported by the pinned wheel.
native-symbols: setup
	@mkdir -p $(NATIVE)
	@nm -D --defined-only $(LITERT_DIR)/libLiteRt.so | awk '{ sub(/@.*/, "", $$3); print $$3 }' > $(NATIVE)/exported.txt
	@grep -oE 'LiteRt[A-Za-z0-9_]+\(' runtime/c/litert_c.h | tr -d '(' | sort -u > $(NATIVE)/declared.txt
	@if grep -vxF -f $(NATIVE)/exported.txt $(NATIVE)/declared.txt; then \
	  echo "native-symbols: the functions above are declared in runtime/c/litert_c.h but not exported by $(LITERT_DIR)/libLiteRt.so" >&2; exit 1; fi
	@echo "native-symbols: all $$(wc -l < $(NATIVE)/declared.txt) LiteRt functions of runtime/c/litert_c.h are exported by libLiteRt.so"

# arm64 (boards, phones): cross-compiled with Debian's gcc-aarch64-linux-gnu against the libLiteRt.so of
# the aarch64 wheel of the same version (a build-time download, like the Debian packages), run by the
# tests under qemu-user-static (docs/native.md: why an aarch64 /proc/cpuinfo is bind-mounted).
ARM64        := build/native-arm64
LITERT_PIN    = $(shell $(BIN)/python -c "import importlib.metadata as m; print(m.version('ai-edge-litert'))")

native-arm64: setup $(ARM64)/edgekit-run

$(ARM64)/lib/libLiteRt.so: $(STAMP)
	@$(MAKE) --no-print-directory native-arm64-tools
	@mkdir -p $(ARM64)/wheel $(@D)
	$(BIN)/pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_27_aarch64 \
	  --python-version 3.11 "ai-edge-litert==$(LITERT_PIN)" -d $(ARM64)/wheel
	$(BIN)/python -c "import glob, zipfile, sys; w = glob.glob('$(ARM64)/wheel/ai_edge_litert-$(LITERT_PIN)-*aarch64*.whl'); \
	  z = zipfile.ZipFile(w[0]); open('$@', 'wb').write(z.read('ai_edge_litert/libLiteRt.so'))"

$(ARM64)/edgekit-run: $(NATIVE_LIB) $(NATIVE_TOOL) $(NATIVE_HDRS) $(ARM64)/lib/libLiteRt.so
	aarch64-linux-gnu-gcc $(NATIVE_WARN) -O2 -o $@ $(NATIVE_LIB) $(NATIVE_TOOL) \
	  -L$(ARM64)/lib -l:libLiteRt.so -Wl,-rpath,'$$ORIGIN/lib' -lm

# Debian's cross compiler and user-mode emulator: installed when missing and apt is usable (as `data`).
native-arm64-tools:
	@if command -v aarch64-linux-gnu-gcc >/dev/null 2>&1 && command -v qemu-aarch64-static >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=none; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$SUDO" != none ]; then \
	  echo "Installing Debian's gcc-aarch64-linux-gnu and qemu-user-static"; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq gcc-aarch64-linux-gnu qemu-user-static >/dev/null && exit 0; \
	fi; \
	echo "native-arm64 needs Debian's gcc-aarch64-linux-gnu and qemu-user-static." >&2; exit 1

bench: setup data
	$(BIN)/python bench/mc_speed.py

clean:
	rm -rf $(VENV) $(BASE) demo-out build *.egg-info
