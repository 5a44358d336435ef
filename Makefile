# acl-repro: `make book` builds the book on the default profile, `make test` runs the tests.
# Every target sets up .venv first (idempotent: redone only when the requirements change).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
PROFILE ?= cpu
# make book trains on a local Ray instance (2 workers x 1 thread), measured the faster way on the cpu
# book's runs (benchmarks/records/ray_vs_sequential.json; tests/test_environment.py checks this line).
# RAY_ADDRESS= (empty) trains sequentially, each chapter in its notebook.
RAY_ADDRESS ?= local
export PYTHONUNBUFFERED := 1

.PHONY: setup test browser book notebook lab bench clean-cache

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is needed, $(PYTHON) is {sys.version.split()[0]}"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(FIND_LINKS) -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name acl-repro --display-name "Python (acl-repro)" >/dev/null
	touch $(STAMP)

test: setup browser
	$(PY) -m pytest -q

# The JupyterLab browser test drives Debian's Chromium (Playwright's own browsers download from a CDN
# this machine does not reach): installed here when missing and we are root, else say how.
browser:
	@command -v chromium >/dev/null 2>&1 || [ -n "$$ACL_CHROMIUM" ] || \
	  { [ "$$(id -u)" = 0 ] && { apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  { echo "the browser test needs Chromium: apt-get install chromium (as root), or set ACL_CHROMIUM=/path/to/chromium"; exit 1; }

# RAY_ADDRESS=local|auto|HOST:PORT: train the missing runs on Ray first (acllib.sweep), then build warm;
# empty: each chapter trains its runs in its notebook, one after another.
book: setup
	$(PY) book/build.py --profile $(PROFILE) $(if $(RAY_ADDRESS),--ray $(RAY_ADDRESS))
	@echo "The book: book/_build/html/index.html"

notebook: setup
	@test -n "$(NB)" || { echo "usage: make notebook NB=01_pilot_angles [PROFILE=cpu]"; exit 2; }
	$(PY) book/build.py --profile $(PROFILE) --only $(NB) --no-build

# Containers (and this project's machines) run as root, where JupyterLab refuses to start without
# --allow-root. LAB_ARGS passes more, e.g. LAB_ARGS="--no-browser --port 8899"; LAB_DIR serves
# another folder (the tests serve a copy, so a browser's autosave never writes into notebooks/).
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
LAB_DIR ?= notebooks
lab: setup
	$(VENV)/bin/jupyter lab $(LAB_DIR) --ip 127.0.0.1 $(LAB_ROOT) $(LAB_ARGS)

bench: setup
	$(PY) benchmarks/bench.py

clean-cache:
	find data_cache -mindepth 1 ! -name README.md -delete
