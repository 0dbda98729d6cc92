"""The Python client's retries and errors, and artifact storage by URI (file:// stands in for s3://
here; the S3 round trip itself runs in tests/integration/test_job_submit.py)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from features import artifacts as A
from serving.client import ApiError, Client


class _Server:
    """Answers from a script: a list of (status, headers, body) per request; records requests."""

    def __init__(self, script):
        self.script, self.seen = list(script), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                outer.seen.append((self.command, self.path, dict(self.headers), json.loads(self.rfile.read(n) or b"null")))
                status, headers, body = outer.script.pop(0)
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self):
        self.httpd.shutdown()


def test_client_retries_429_and_503_as_retry_after_says_and_keeps_event_ids():
    srv = _Server([(503, {"Retry-After": "0"}, {"error": "overloaded"}),
                   (429, {"Retry-After": "0"}, {"error": "rate limit"}),
                   (200, {}, {"accepted": 1, "duplicates": 0, "event_ids": ["x"]})])
    try:
        out = Client(srv.url, api_key="k1").events([{"user_id": "u1", "event_type": "view", "item_id": "i1"}])
        assert out["accepted"] == 1 and len(srv.seen) == 3
        ids = {s[3][0]["event_id"] for s in srv.seen}
        assert len(ids) == 1  # the retried batch carries the same id: the server de-duplicates it
        assert all({k.lower(): v for k, v in s[2].items()}.get("x-api-key") == "k1" for s in srv.seen)
    finally:
        srv.close()


def test_client_errors_carry_the_status_and_the_field():
    srv = _Server([(422, {}, {"error": "k: 100000 is over the limit; allowed: 1..100", "field": "k"}),
                   (503, {"Retry-After": "5"}, {"error": "overloaded"})])
    try:
        c = Client(srv.url, max_wait_s=1)
        with pytest.raises(ApiError) as e:
            c.search("mug", k=100000)
        assert e.value.status == 422 and e.value.body["field"] == "k" and len(srv.seen) == 1
        with pytest.raises(ApiError) as e:  # Retry-After beyond the client's patience: give up at once
            c.recommend("u1")
        assert e.value.status == 503
        assert srv.seen[1][1] == "/v1/recommend" and srv.seen[1][3] == {"user_id": "u1", "k": 10}
    finally:
        srv.close()


def test_versions_under_a_uri_are_staged_written_and_read_through_a_local_copy(tmp_path, monkeypatch):
    from features.models.learned_ranker import LearnedRanker
    from features.retrieval.index import IndexConfig, ItemIndex

    monkeypatch.setenv(A.CACHE_ENV, str(tmp_path / "cache"))
    root = f"file://{tmp_path}/remote"
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(20, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = ItemIndex.build([f"i{i}" for i in range(20)], vecs, IndexConfig(kind="flat"))
    version = A.join(root, "index", A.new_version())
    index.save(version)
    A.write_manifest(version, A.manifest("index", "v", {}, {}, {}, {}))
    assert (tmp_path / "remote" / "index").is_dir() and A.latest_complete(root, "index") == version
    loaded = ItemIndex.load(version)  # read through the cache, downloaded once
    assert loaded.item_ids == index.item_ids and np.allclose(loaded.vectors(), vecs, atol=1e-6)
    cached = A.local_copy(version)
    assert cached.startswith(str(tmp_path / "cache")) and A.local_copy(version) == cached
    import polars as pl

    fs, inner = A.resolve(A.join(root, "t.parquet"))
    with fs.open_output_stream(inner) as f:
        pl.DataFrame({"a": [1, 2]}).write_parquet(f)
    assert A.read_parquet(A.join(root, "t.parquet"))["a"].to_list() == [1, 2]
    with pytest.raises(FileNotFoundError):
        LearnedRanker.load(A.join(root, "ranker", "missing"))


def test_staging_uploads_nothing_when_the_writer_fails(tmp_path):
    dest = f"file://{tmp_path}/remote/v1"
    with pytest.raises(RuntimeError):
        with A.staged(dest) as d:
            (d / "half.bin").write_bytes(b"x")
            raise RuntimeError("writer died")
    assert not (tmp_path / "remote").exists()
