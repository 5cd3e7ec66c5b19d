# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT := artifacts/demo

.PHONY: venv demo test lint bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

DEMO_MODEL ?= toy

demo: venv
	$(BIN)/flowlens trace $(DEMO_MODEL) --dataset synthetic --split test --limit 16 --out $(DEMO_OUT) --overwrite
	$(BIN)/flowlens inspect $(DEMO_MODEL) --frames 8 --json --out $(DEMO_OUT)/inspect.json > /dev/null
	@echo "demo: run file, report and layout in $(DEMO_OUT)/ (open $(DEMO_OUT)/report.html)"

test: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: venv
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) artifacts/demo .pytest_cache
