# The two commands a new user needs: `make bench` and `make test`. Each first installs whatever is
# missing on a fresh Debian machine: the ARM toolchain (C and C++, the latter for the TFLM engine) and QEMU
# from apt, a .venv with the package.

PYTHON  ?= python3
VENV    ?= .venv
BOARD   ?= nucleo-f746
MODEL   ?= mcunet_vww
PYTEST_ARGS ?=
APT_PACKAGES := gcc-arm-none-eabi libnewlib-arm-none-eabi libstdc++-arm-none-eabi-newlib qemu-system-arm
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: bench test setup tools test-tools lint clean

bench: setup
	$(VENV)/bin/harness bench --board $(BOARD) --model $(MODEL)

test: setup test-tools $(VENV)/.installed-test
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: setup $(VENV)/.installed-test
	$(VENV)/bin/ruff check harness tests
	$(VENV)/bin/ruff format --check harness tests

setup: tools $(VENV)/.installed

# apt only when something is missing, so a warm `make` costs nothing.
tools:
	@missing=""; \
	command -v arm-none-eabi-gcc >/dev/null || missing="$$missing gcc-arm-none-eabi"; \
	[ -e /usr/lib/arm-none-eabi/newlib/libc_nano.a ] || [ -e "$$(arm-none-eabi-gcc -print-file-name=libc_nano.a 2>/dev/null)" ] \
		|| missing="$$missing libnewlib-arm-none-eabi"; \
	command -v qemu-system-arm >/dev/null || missing="$$missing qemu-system-arm"; \
	printf '#include <new>\n' | arm-none-eabi-g++ -x c++ -fsyntax-only - 2>/dev/null \
		|| missing="$$missing libstdc++-arm-none-eabi-newlib"; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv python3-pip"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

# The tests also render the accuracy report in headless Chromium (the bench never needs it).
test-tools:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
		echo "installing: chromium"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

$(VENV)/.installed: pyproject.toml
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e .
	touch $@

# pytest, ruff and the TFLite interpreter (the oracle) only for the tests: the bench needs none of them
$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf build .pytest_cache
