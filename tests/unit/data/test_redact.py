"""Forgetting shoppers offline: jobs.forget_user on an artifacts tree and a serving state folder
with no app running; every byte of the id goes, other shoppers stay, and leftovers are reported."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.data.redact import find_bytes, redact_users
from features.profiles.events import TS_US
from features.profiles.profile import ProfileParams
from features.profiles.store import ProfileStore
from jobs import forget_user


def _tree(tmp_path):
    art = tmp_path / "artifacts" / "features" / "v1"
    (art / "users").mkdir(parents=True)
    (art / "manifest.json").write_text(json.dumps({"kind": "features", "inputs": {"events": {"path": "/shop/log"}}}))
    for part in range(2):
        pq.write_table(pa.table({"user_id": [f"c100{part}", "c-gone-42", "c2000"], "n": [1, 2, 3],
                                 "recent_items": [["a"], ["b"], ["c"]]}), art / "users" / f"part-{part}.parquet")
    pq.write_table(pa.table({"item_id": ["a", "b"]}), art / "items.parquet")  # no shopper column: untouched
    state = tmp_path / "state"
    store = ProfileStore(state / "profiles", ProfileParams(), lambda i: (np.ones(4, np.float32) / 2, None, None),
                         fsync=False)
    store.append([{"event_id": f"e-{u}", "user_id": u, "event_type": "view", "item_id": "a", TS_US: 1_000_000}
                  for u in ("c-gone-42", "c2000")])
    store.close()
    return tmp_path / "artifacts", state


def test_forget_user_offline_scrubs_artifacts_and_state(tmp_path, capsys):
    art, state = _tree(tmp_path)
    assert find_bytes([art, state], ["c-gone-42"])  # it is there before
    rc = forget_user.main(["--user-id", "c-gone-42", "--artifacts", str(art), "--state", str(state),
                           "--runs", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "2 rows removed from 2 of 3 Parquet files" in out and "/shop/log" in out
    assert find_bytes([art, state], ["c-gone-42", "e-c-gone-42"]) == []
    users = pq.read_table(art / "features" / "v1" / "users").column("user_id").to_pylist()
    assert sorted(users) == ["c1000", "c1001", "c2000", "c2000"]
    manifest = json.loads((art / "features" / "v1" / "manifest.json").read_text())
    assert manifest["redactions"][0]["rows_removed"] == 2 and "c-gone-42" not in json.dumps(manifest)
    again = ProfileStore(state / "profiles", ProfileParams(), lambda i: (None, None, None), fsync=False)
    assert again.get("c-gone-42") is None and again.get("c2000") is not None


def test_leftovers_outside_user_id_columns_are_reported_not_hidden(tmp_path, capsys):
    art, state = _tree(tmp_path)
    (art / "features" / "v1" / "notes.json").write_text('{"sample_user": "c-gone-42"}')
    assert forget_user.main(["--user-id", "c-gone-42", "--artifacts", str(art), "--state", str(state),
                             "--runs", str(tmp_path / "runs")]) == 1
    assert "notes.json" in capsys.readouterr().err
    pq.write_table(pa.table({"who": ["c-gone-42"]}), art / "other.parquet")
    assert redact_users([art], ["c-gone-42"]).rows_removed == 0  # only user_id columns are rewritten...
    assert any(p.endswith("other.parquet:who") for p in find_bytes([art], ["c-gone-42"]))  # ...the rest is reported
