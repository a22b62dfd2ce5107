# Two commands: `make demo` (set up + the main job) and `make test` (set up + the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first, unless a torch is already there (a GPU machine brings its own).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==2.13.0" \
		|| $(PY) -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/dpokit train
	$(VENV)/bin/dpokit generate --model dpo_checkpoints/final --prompt "Explain quantum computing" --max-new-tokens 40

test: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) dpo_checkpoints .pytest_cache
