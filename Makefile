# Everything a new user needs: `make image` (set up + generate an image with the embedded
# default model) and `make test` (set up + run the tests).
# The virtual environment lives in .venv; it is rebuilt when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup image test test-slow lint clean

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

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
