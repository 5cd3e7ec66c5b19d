# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT := artifacts/demo
LOCK := requirements/lock.txt
UV := $(BIN)/uv --no-progress
PYTEST := python -m pytest -q -n 2 --dist loadfile
# Where `make test-latest` / `make test-oldest` build their throwaway environments.
RANGE_VENV ?= /tmp/flowlens-range-venv

.PHONY: venv lock demo test test-latest test-oldest lint bench docs cli-docs clean

venv: $(STAMP)

# The locked, tested set (requirements/lock.txt), then flowlens itself without re-resolving anything.
# uv installs it ~5x faster than pip (measured in docs/installing.md); pip is the fallback.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	$(UV) pip install --quiet --python $(BIN)/python -r $(LOCK) || $(BIN)/python -m pip install --quiet -r $(LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps -e . || $(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Re-resolve the lock from pyproject.toml (newest releases within its ranges and requirements/lock-caps.txt).
lock: venv
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -c requirements/lock-caps.txt \
		--custom-compile-command "make lock" -o $(LOCK)

DEMO_MODEL ?= toy

demo: venv
	$(BIN)/flowlens trace $(DEMO_MODEL) --dataset synthetic --split test --limit 16 --out $(DEMO_OUT) --overwrite
	$(BIN)/flowlens inspect $(DEMO_MODEL) --frames 8 --json --out $(DEMO_OUT)/inspect.json > /dev/null
	@echo "demo: run file, report and layout in $(DEMO_OUT)/ (open $(DEMO_OUT)/report.html)"

test: venv
	$(BIN)/$(PYTEST)

# The supported range, each in a throwaway venv: the newest release of every dependency (no caps) ...
test-latest: venv
	rm -rf $(RANGE_VENV)-latest && $(UV) venv --quiet --python $(PYTHON) $(RANGE_VENV)-latest
	$(UV) pip install --quiet --python $(RANGE_VENV)-latest/bin/python --upgrade -e ".[dev]"
	$(UV) pip freeze --python $(RANGE_VENV)-latest/bin/python | grep -iE '^(torch|torchvision|transformers|transformer-lens|nnsight|numpy)=='
	FLOWLENS_CACHE=$(RANGE_VENV)-latest/cache $(RANGE_VENV)-latest/bin/$(PYTEST)

# ... and the lowest release pyproject.toml allows of every direct dependency.
test-oldest: venv
	rm -rf $(RANGE_VENV)-oldest && $(UV) venv --quiet --python $(PYTHON) $(RANGE_VENV)-oldest
	$(UV) pip install --quiet --python $(RANGE_VENV)-oldest/bin/python --resolution lowest-direct -e ".[dev]"
	$(UV) pip freeze --python $(RANGE_VENV)-oldest/bin/python | grep -iE '^(torch|torchvision|transformers|transformer-lens|nnsight|numpy)=='
	FLOWLENS_CACHE=$(RANGE_VENV)-oldest/cache $(RANGE_VENV)-oldest/bin/$(PYTEST)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: venv
	$(BIN)/python -m benchmarks.run

# The docs site in site/: notebooks executed (nbclient), then `mkdocs build --strict` (tools/build_docs.py).
docs: venv
	$(BIN)/python tools/build_docs.py --site-dir site

# Regenerate docs/cli.md from the argument parser (tests/test_docs_site.py fails when it is stale).
cli-docs: venv
	$(BIN)/python -m flowlens.docs_cli > docs/cli.md

clean:
	rm -rf $(VENV) artifacts/demo .pytest_cache site
