# Two commands on a fresh machine:  `make quickstart`  and  `make test`  (see README.md).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install quickstart test crds

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -c constraints.txt -e '.[operator,runtime,detection,dev]'
	touch $@

quickstart: install
	$(BIN)/freeatm run -f examples/quickstart.yaml --workdir quickstart

# With Go on the machine the real control-plane tier is built (once; reused from ~/.cache/freeatm) and required;
# without Go it is skipped with a message and the kmock tier runs alone.
test: install
	bash .ci/setup-tools.sh
	PATH="$(abspath $(BIN)):$$PATH" FREEATM_REQUIRE_CONTROL_PLANE="$${FREEATM_REQUIRE_CONTROL_PLANE:-$$(command -v go >/dev/null && echo 1)}" \
	  $(BIN)/python -m pytest

crds: install
	$(BIN)/freeatm crds --out crds/
