# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv once and reuse it.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
PIP = $(VENV)/bin/python -m pip

.PHONY: demo test lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# One stamp per set of extras; reinstalled only when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[$*]"
	touch $@

demo: $(VENV)/.installed-all
	$(VENV)/bin/edgeqa demo

test: lint
	$(VENV)/bin/python -m pytest

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check edgeqa finetune export runtime serve documents benchmarks tests
	$(VENV)/bin/mypy edgeqa finetune export runtime serve documents benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info edgeqa-demo
