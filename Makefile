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

demo: venv
	mkdir -p $(DEMO_OUT)
	$(BIN)/flowlens inspect tiny:llava_next_video --frames 8 --out $(DEMO_OUT)/inspect_llava_next_video.json
	@for family in llava_onevision qwen2_vl qwen2_5_vl qwen3_vl video_llama_3 internvl; do \
		$(BIN)/flowlens inspect tiny:$$family --frames 8 --json --out $(DEMO_OUT)/inspect_$$family.json > /dev/null || exit 1; \
	done
	@echo "demo: layouts written to $(DEMO_OUT)/"

test: venv
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: venv
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) artifacts/demo .pytest_cache
