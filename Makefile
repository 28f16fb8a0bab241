# Two commands from a fresh clone: `make demo` and `make test`. Both create .venv once and reuse it.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch; a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
PIP = $(VENV)/bin/python -m pip
# The second environment: the train extra (and DeepSpeed) on the newest transformers 5.x (docs/environments.md).
TRAIN_VENV ?= .venv-train

.PHONY: demo test test-train lint clean gpu-wheels

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

# The fine-tuning tests, and the fine-tuning benchmark's (a GPU machine runs it on 5.x), on transformers 5.x.
test-train: $(TRAIN_VENV)/.installed
	$(TRAIN_VENV)/bin/python -m pytest tests/test_finetune.py tests/test_bench.py -k "not test_bench or finetune_speed"

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check edgeqa finetune export runtime serve documents benchmarks tests
	$(VENV)/bin/mypy edgeqa finetune export runtime serve documents benchmarks

# Wheels for a GPU machine with no network, whose Python has torch, transformers and accelerate but
# not the rest of the fine-tuning stack (benchmarks/gpu_finetune_speed.sh installs them there).
# Resolved together so their versions agree; only the ones that machine lacks, or may hold too old
# (pyarrow, fsspec: datasets 5 needs recent ones), are kept.
GPU_PYTHON_VERSION ?= 3.12
WHEELS ?= .whl
GPU_WHEELS ?= datasets dill multiprocess fsspec pyarrow nltk defusedxml
gpu-wheels:
	rm -rf $(WHEELS) && mkdir -p $(WHEELS)
	$(PYTHON) -m pip download -q --only-binary=:all: --python-version $(GPU_PYTHON_VERSION) --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d $(WHEELS)/.resolve "datasets>=3.0" "nltk>=3.8"
	for name in $(GPU_WHEELS); do cp $(WHEELS)/.resolve/$$name-*.whl $(WHEELS)/; done
	$(PYTHON) -m pip wheel -q --no-deps -w $(WHEELS) "rouge_score>=0.1.2"
	rm -rf $(WHEELS)/.resolve
	du -sh $(WHEELS)

clean:
	rm -rf $(VENV) $(TRAIN_VENV) build dist *.egg-info edgeqa-demo
