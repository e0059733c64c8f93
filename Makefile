# The two commands the README starts with: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
# Where torch comes from. Empty: pip's configured indexes (on a plain machine that is PyPI, whose Linux wheel is
# the CUDA build, several GB). `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes the CPU build.
TORCH_INDEX ?=
TORCH_INDEX_ARG := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: demo test install clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, from TORCH_INDEX when given, so that the range in pyproject is already satisfied.
	$(BIN)/pip install -q $(TORCH_PIN) $(TORCH_INDEX_ARG)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/vlselect demo --out demo-out

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) demo-out
