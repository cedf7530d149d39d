# efird — everything a fresh Debian 12 machine (as root) needs goes through these targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup system-deps test lint check demo demo-call demo-boot shim bench vectors fuzz clean

setup: $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

$(STAMP): pyproject.toml setup.py cext/build.py cext/*.c cext/*.h cext/*.cdef protocols/efird.h scripts/install-system-deps.sh
	bash scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

lint: setup
	$(BIN)/ruff check efird tests cext scripts benchmarks fuzz
	$(BIN)/mypy

## The test command (README, .ci/run): lint, types, then the whole suite.
test: lint
	$(BIN)/pytest -q

## The demo (README): efird attached to a real QEMU 10, driven like a booting guest.
demo: setup
	$(BIN)/python scripts/demo.py

## The seed, live: Debian's stock kernel boots through efird's PVH shim (protocols/shim)
## under QEMU 10, efivarfs and kexec in the guest.
demo-boot: setup shim
	$(BIN)/python scripts/demo_boot.py

## The PVH shim, built with the system gcc and ld.
shim:
	$(MAKE) -C protocols/shim OUT=$(CURDIR)/build/shim

## The variable service through `efird call`, with Secure Boot keys from openssl/efitools.
demo-call: setup
	$(BIN)/python scripts/demo_call.py

bench: setup
	$(BIN)/python -m benchmarks

## Fuzzing (fuzz/): every target for FUZZ_SECONDS each at the lowest priority; the figures
## go to fuzz/RESULTS.md and fuzz/results.json, corpora and crashes to fuzz/work/.
FUZZ_SECONDS ?= 60
fuzz: setup
	nice -n 19 $(BIN)/python -m fuzz --seconds $(FUZZ_SECONDS) --nice 19

vectors: setup
	$(BIN)/python -m efird.abi.vectors --write protocols/vectors

clean:
	rm -rf $(VENV) build *.egg-info efird/_cext*.so
