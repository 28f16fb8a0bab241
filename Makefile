# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv once and reuse it.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
PIP = $(VENV)/bin/python -m pip
# The second environment: the train extra (and DeepSpeed) on the newest transformers 5.x (docs/environments.md).
TRAIN_VENV ?= .venv-train

.PHONY: demo test test-train lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# One stamp per set of extras; reinstalled only when pyproject.toml changes.
$(VENV)/.installed-%: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[$*]"
	touch $@

# Naming transformers>=5 makes pip fail rather than quietly resolve the extra to an older transformers.
$(TRAIN_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TRAIN_VENV)
	$(TRAIN_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRAIN_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(TRAIN_VENV)/bin/python -m pip install -q -e ".[train,deepspeed]" "transformers>=5,<6" "pytest>=8"
	touch $@

demo: $(VENV)/.installed-all
	$(VENV)/bin/edgeqa demo

# With the second environment present, tests/test_cross_version.py trains there and exports here.
test: lint
	EDGEQA_TRAIN_PYTHON=$(if $(wildcard $(TRAIN_VENV)/.installed),$(abspath $(TRAIN_VENV))/bin/python) \
		$(VENV)/bin/python -m pytest

# The fine-tuning tests on transformers 5.x.
test-train: $(TRAIN_VENV)/.installed
	$(TRAIN_VENV)/bin/python -m pytest tests/test_finetune.py

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check edgeqa finetune export runtime serve documents benchmarks tests
	$(VENV)/bin/mypy edgeqa finetune export runtime serve documents benchmarks

clean:
	rm -rf $(VENV) $(TRAIN_VENV) build dist *.egg-info edgeqa-demo
