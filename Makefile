# Everything a new user needs: `make image` (set up + generate an image with the embedded
# default model) and `make test` (set up + run the tests).
# The virtual environment lives in .venv; it is rebuilt when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup image test test-slow lint clean bench bench-lantern

PROMPT ?= a large red circle at the top left on a blue background
METHOD ?= sjd
OUT ?= outputs/quickstart.png

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,eval]'
	touch $@

setup: $(VENV)/.installed

image: setup
	$(VENV)/bin/mmaccel generate-image "$(PROMPT)" --method $(METHOD) --seed 0 --out $(OUT)

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

BENCH_METHODS ?= ar,sjd,sjd-coupled:init=random,sjd-coupled:init=horizontal,sjd-coupled:init=vertical,lantern:lantern_delta=0.1,lantern:lantern_delta=0.4,lantern:lantern_rule=paper,lantern_delta=0.05,lantern:lantern_rule=paper,lantern_delta=0.1,lantern:lantern_rule=paper,lantern_delta=0.2,zipar:zipar_window=8,zipar:zipar_window=4,zipar:zipar_window=2,zipar:zipar_window=1,zipar+sjd:zipar_window=4,zipar+sjd:zipar_window=3,zipar+sjd:zipar_window=2,zipar+sjd:zipar_window=4,init=vertical,zipar+lantern:zipar_window=2,lantern_rule=paper,lantern_delta=0.1,zipar+lantern:zipar_window=4,lantern_rule=paper,lantern_delta=0.8

bench: setup
	$(VENV)/bin/mmaccel eval compare --methods "$(BENCH_METHODS)" --prompts 200 --batch 20 --real 1000 --noise-floor --out docs/benchmarks/default_model

# larger LANTERN deltas at the default temperature (same prompts and seeds as `bench`, ar and sjd re-run)
bench-lantern: setup
	$(VENV)/bin/mmaccel eval compare --methods "ar,sjd,lantern:lantern_rule=paper,lantern_delta=0.3,lantern:lantern_rule=paper,lantern_delta=0.5,lantern:lantern_rule=paper,lantern_delta=0.8,lantern:lantern_rule=paper,lantern_delta=1.0,lantern:lantern_rule=paper,lantern_delta=0.8,lantern_k=32" --prompts 200 --batch 20 --real 1000 --out docs/benchmarks/default_model_lantern_delta

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
