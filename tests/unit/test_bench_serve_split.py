"""bench/serve_latency.py splits each answer's latency into inside the Ingress (its took_ms) and outside."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from bench.serve_latency import free_port, open_loop, took_of


def test_took_of_reads_intently_answers_only():
    assert took_of(json.dumps({"results": [], "took_ms": 6.5, "timings_ms": {"encode": 4.0, "rank": 1}}).encode()) == (
        6.5, {"encode": 4.0, "rank": 1.0})
    assert took_of(b'{"results": []}') is None  # the hand-rolled server's answer
    assert took_of(b"not json") is None and took_of(b"[1, 2]") is None


def test_open_loop_splits_latency_into_inside_and_outside_the_server():
    async def run() -> dict:
        async def search(request: web.Request) -> web.Response:
            await asyncio.sleep(0.02)  # the client sees at least 20 ms; the server says it took 5
            return web.json_response({"results": [], "took_ms": 5.0, "timings_ms": {"encode": 3.0, "rank": 2.0}})

        app = web.Application()
        app.router.add_post("/v1/search", search)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            return await open_loop(f"http://127.0.0.1:{port}", [("POST", "/v1/search", {"query": "mug"})], 20, 0.5)
        finally:
            await runner.cleanup()

    out = asyncio.run(run())
    assert out["ok"] == 10 and out["errors"] == 0
    sp = out["server_split"]
    assert sp["inside"]["p50_ms"] == 5.0 and sp["hop encode"]["p99_ms"] == 3.0 and sp["hop rank"]["n"] == 10
    assert sp["outside"]["p50_ms"] >= 15.0  # the client's latency minus took_ms
    assert abs(sp["outside"]["p50_ms"] + 5.0 - out["p50_ms"]) < 1e-6
