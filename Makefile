# intently: `make demo` and `make test` work on a fresh machine (they create .venv first).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
RAY_DASHBOARD_PORT ?= 8265
ART := $(CURDIR)/artifacts

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONUNBUFFERED := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: venv data features features-job demo test test-unit bench ray-up ray-down clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	set -o pipefail; $(BIN)/pip install -q -e ".[dev]" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	touch $(STAMP)

venv: $(STAMP)

data/canonical/online_retail/events.parquet: data/online_retail.parquet jobs/import_online_retail.py features/online_retail.py | $(STAMP)
	$(BIN)/python -m jobs.import_online_retail

data: data/canonical/online_retail/events.parquet

features: data
	$(BIN)/python -m jobs.build_features --set output_root=$(ART)

# The main job end to end on the bundled real data.
demo: venv data features
	@echo "demo: features written under $(ART)/features (newest version has manifest.json)"

test: venv
	set -o pipefail; $(BIN)/python -m pytest tests 2>&1 | tee .pytest-last.log

test-unit: venv
	$(BIN)/python -m pytest tests/unit

bench: venv data
	$(BIN)/python -m bench.feature_job

# A local single-node cluster for `ray job submit --address http://127.0.0.1:$(RAY_DASHBOARD_PORT)`.
# The venv's bin goes first on PATH so a submitted job's `python` is the project's interpreter.
ray-up: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/ray start --head --num-cpus=2 --include-dashboard=true --dashboard-host=127.0.0.1 \
	  --dashboard-port=$(RAY_DASHBOARD_PORT) --disable-usage-stats

# The feature job through the job server of `make ray-up` (Ray 2.60 clusters require the token
# in ~/.ray/auth_token; RAY_AUTH_MODE=token makes the CLI send it).
features-job: venv data
	RAY_AUTH_MODE=token $(BIN)/ray job submit --address http://127.0.0.1:$(RAY_DASHBOARD_PORT) --working-dir . -- \
	  python -m jobs.build_features --set output_root=$(ART)

ray-down:
	-$(BIN)/ray stop

clean: ray-down
	rm -rf artifacts data/canonical bench/.data .pytest_cache .pytest-last.log
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
