"""Spec-driven HTTP fuzzing: requests generated from the running app's own OpenAPI document.

    python -m bench.fuzz_api [--artifacts artifacts] [--examples 400] [--seed 0]

schemathesis reads /openapi.json from the live app and, for every operation, hypothesis generates
`--examples` requests that follow the spec (positive) and as many that break it on purpose
(negative: wrong types, missing or unknown fields, out-of-range numbers, malformed bodies). Each
answer must pass schemathesis's checks:

- not_a_server_error: never a 5xx;
- status_code_conformance / content_type_conformance / response_schema_conformance: the status
  is one the spec documents and the body has the documented shape (errors included);
- negative_data_rejection: a request that breaks the spec is refused with a 4xx (413 included:
  a body too large or more events than the spec's maxItems).

No request may hang (30 s client timeout). Writes send the API key, so they reach validation.
Half the positive cases are made to name things that exist (catalog items, the server's clock, a
shopper who logged events), so accepted writes and forgets are fuzzed as well as refusals.
State: the Profiles replica's count of logged events must change by exactly the events the
answers acknowledged minus those a forget removed, and the catalog by exactly the items created
(201): a rejected write changes nothing.

A local 2-CPU Ray runs the Serve app (serving/config.yaml's options, an API key, a fresh state
dir). Writes bench/results/fuzz_api.json. tests/e2e/test_serve_api.py runs fuzz_openapi() at a
smaller size in `make test`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from features.artifacts import git_commit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODES = ("positive", "negative")


def _state(base: str) -> dict[str, int]:
    import requests

    h = requests.get(f"{base}/healthz", timeout=30).json()
    # catalog rows: live items plus removed ones (a DELETE /v1/items hides a row, a PUT adds one)
    return {"logged_event_ids": h["profiles"]["logged_event_ids"],
            "items": h["retriever"]["items"] + h["retriever"].get("removed", 0)}


def fuzz_openapi(base: str, api_key: str | None, examples: int, seed: int = 0) -> dict[str, Any]:
    """Fuzz every operation of the app at `base` from its OpenAPI document; a report with every
    failed check (with a curl line to reproduce it) and the state before and after."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              negative_data_rejection]
    from schemathesis.config import SchemathesisConfig

    spec = requests.get(f"{base}/openapi.json", timeout=30).json()
    # A refusal is any 4xx the spec documents for bad input: schemathesis's default list lacks 413,
    # which the app answers for a body over max_body_bytes or more events than the spec's maxItems.
    refusals = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
    config = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": refusals}}})
    schema = schemathesis.openapi.from_dict(spec, config=config)
    headers = {"X-API-Key": api_key} if api_key else {}
    session = requests.Session()
    before = _state(base)
    report: dict[str, Any] = {"commit": git_commit(), "examples_per_operation_and_mode": examples, "seed": seed,
                              "requests": 0,
                              "by_operation": {}, "failures": [], "hangs": 0, "max_latency_s": 0.0,
                              "acknowledged_events": 0, "forgotten_events": 0, "items_created": 0}
    t_start = time.perf_counter()

    from serving.client import Client

    catalog = [r["item_id"] for r in Client(base, timeout_s=30).search("bag", k=100)["results"]]
    writers: list[str] = []  # shoppers with acknowledged events, for forget

    def realistic(case: Any, label: str, pick: int) -> None:
        """Half the positive cases name things that exist (catalog items, the server's clock, a
        shopper who logged events), so accepted writes and forgets are fuzzed too, not only 404s."""
        if pick % 2 or not catalog:
            return
        if label == "POST /v1/events" and isinstance(case.body, list):
            for j, e in enumerate(case.body):
                if isinstance(e, dict):
                    e["ts"] = None
                    if e.get("item_id") is not None:
                        e["item_id"] = catalog[(pick + j) % len(catalog)]
        elif label == "POST /v1/recommend" and isinstance(case.body, dict) and case.body.get("context_item_id"):
            case.body["context_item_id"] = catalog[pick % len(catalog)]
        elif label == "GET /v1/items/{item_id}/similar":
            case.path_parameters["item_id"] = catalog[pick % len(catalog)]
        elif label == "DELETE /v1/users/{user_id}" and writers:
            case.path_parameters["user_id"] = writers.pop(pick % len(writers))

    def one(case: Any, label: str, mode: str, pick: int) -> None:
        if mode == "positive":
            realistic(case, label, pick)
        t = time.perf_counter()
        try:
            resp = case.call(base_url=base, session=session, headers=headers, timeout=30)
        except requests.RequestException as e:  # a timeout is a hang; a reset is a crash
            report["hangs"] += isinstance(e, requests.Timeout)
            report["failures"].append({"operation": label, "mode": mode, "status": None,
                                       "failure": f"{type(e).__name__}: {e}"[:500]})
            return
        took = time.perf_counter() - t
        report["requests"] += 1
        report["max_latency_s"] = max(report["max_latency_s"], round(took, 3))
        tally = report["by_operation"].setdefault(label, {}).setdefault(mode, {})
        tally[str(resp.status_code)] = tally.get(str(resp.status_code), 0) + 1
        if resp.status_code in (200, 201):
            try:
                body = resp.json()
            except ValueError:
                body = {}
            if label == "POST /v1/events":
                report["acknowledged_events"] += body.get("accepted", 0)
                writers.extend(e["user_id"] for e in case.body if isinstance(e, dict))
            elif label == "DELETE /v1/users/{user_id}":
                report["forgotten_events"] += body.get("events_removed", 0)
            elif label == "PUT /v1/items/{item_id}" and resp.status_code == 201:
                report["items_created"] += 1
        try:
            case.validate_response(resp, checks=checks, headers=headers)
        except (Exception, BaseExceptionGroup) as e:  # noqa: BLE001 - every failed check is evidence; keep going
            if len(report["failures"]) < 200:
                report["failures"].append({"operation": label, "mode": mode, "status": resp.status_code,
                                           "failure": str(e)[:800], "response": resp.text[:300],
                                           "reproduce": case.as_curl_command(headers=headers)[:1500]})

    for result in schema.get_all_operations():
        op = result.ok()
        label = f"{op.method.upper()} {op.path}"
        for mode in MODES:
            strategy = op.as_strategy(generation_mode=GenerationMode(mode))

            @hypothesis_seed(seed)
            @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
            @given(case=strategy, pick=st.integers(0, 2**31))
            def run(case: Any, pick: int) -> None:
                one(case, label, mode, pick)

            t = time.perf_counter()
            try:
                run()
            except Exception as e:  # noqa: BLE001 - e.g. nothing to negate in an operation without inputs
                report["by_operation"].setdefault(label, {})[f"{mode}_not_generated"] = f"{type(e).__name__}: {e}"[:300]
            n = sum(v for k, v in report["by_operation"].get(label, {}).get(mode, {}).items())
            print(f"  {label} {mode}: {n} requests in {time.perf_counter() - t:.1f}s", flush=True)

    after = _state(base)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    report["state"] = {
        "before": before, "after": after,
        "log_change": after["logged_event_ids"] - before["logged_event_ids"],
        "expected_log_change": report["acknowledged_events"] - report["forgotten_events"],
        "catalog_change": after["items"] - before["items"], "expected_catalog_change": report["items_created"]}
    st = report["state"]
    report["rejected_writes_changed_nothing"] = (st["log_change"] == st["expected_log_change"]
                                                 and st["catalog_change"] == st["expected_catalog_change"])
    report["server_errors"] = sum(n for ops in report["by_operation"].values() for m in ops.values()
                                  if isinstance(m, dict) for code, n in m.items() if code.startswith("5"))
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--examples", type=int, default=400, help="generated requests per operation and mode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "fuzz_api.json"))
    ns = ap.parse_args(argv)
    from bench.faults import LocalServe
    from bench.serve_latency import wait_http

    env = LocalServe("bench-fuzz-state-", ns.artifacts)
    import ray
    from ray import serve

    from serving.app import build_app_with_options

    key = "fuzz-api-key"
    opts = env.conf["deployment_options"]
    opts["Ingress"]["ray_actor_options"] = {**opts["Ingress"].get("ray_actor_options", {}),
                                            "runtime_env": {"env_vars": {"INTENTLY_API_KEY": key}}}
    serve.run(build_app_with_options(env.conf["args"], opts), name="intently", route_prefix="/")
    base = f"http://127.0.0.1:{env.proxy}"
    wait_http(f"{base}/healthz", 180)
    try:
        report = fuzz_openapi(base, key, ns.examples, ns.seed)
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(env.state, ignore_errors=True)
    Path(ns.out).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.out).write_text(json.dumps(report, indent=1))
    summary = {k: v for k, v in report.items() if k not in ("by_operation", "failures")}
    print(json.dumps({**summary, "failures": len(report["failures"])}, indent=1))
    for f in report["failures"][:10]:
        print(json.dumps(f, indent=1))
    print(f"wrote {ns.out}")
    ok = not report["failures"] and report["rejected_writes_changed_nothing"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
