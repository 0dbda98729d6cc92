"""Forget shoppers everywhere intently keeps them: serving state and batch artifacts.

    python -m jobs.forget_user --user-id c12347 [--user-id ...] [--url http://127.0.0.1:8000]
        [--artifacts artifacts] [--state state] [--runs runs]
    make forget USER_ID=c12347

1. Serving: with --url, DELETE /v1/users/{id} on the running app (it removes the profile, the
   logged events and the event ids from its own state; $INTENTLY_API_KEY is sent). Without a
   running app (no --url, or nothing listens there), the state folder is edited directly
   (features/profiles/store.py forget_offline); do not do that under a running app.
2. Batch artifacts: every Parquet file under --artifacts and --runs is rewritten without the
   users' rows (features/data/redact.py); the manifests note how many rows went, never who.
3. Proof: every file under the three folders is read back, raw and decoded; any occurrence of an id
   is listed and the command exits 1.

The shop's own source logs (the feature job's inputs) are not changed: remove the users there
too, or the next feature build brings them back. Exit codes: 0 done and verified, 1 an id is still
found, 2 the serving app refused (e.g. a wrong API key).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from features import artifacts as A
from features.data.redact import find_bytes, redact_users
from features.profiles.store import forget_offline


def forget_in_serving(url: str, user_id: str, timeout_s: float = 30.0) -> dict | None:
    """DELETE the user on the app; None when no app answers at `url`. 404 means "nothing there"."""
    req = urllib.request.Request(f"{url.rstrip('/')}/v1/users/{urllib.parse.quote(user_id, safe='')}", method="DELETE")
    key = os.environ.get("INTENTLY_API_KEY", "").split(",")[0].strip()
    if key:
        req.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        if e.code == 404:
            return {"user_id": user_id, "events_removed": 0, "profile_removed": False}
        raise RuntimeError(f"{url}: DELETE /v1/users/{user_id} answered {e.code}: {body[:300]}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, ConnectionRefusedError):
            return None
        raise


def source_logs(roots: list[Path]) -> list[str]:
    """The input event logs named by the feature manifests under `roots`."""
    out = set()
    for root in roots:
        for m in root.glob("**/features/*/manifest.json") if root.exists() else []:
            path = json.loads(m.read_text()).get("inputs", {}).get("events", {}).get("path")
            if path:
                out.add(path)
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--user-id", action="append", required=True, help="a shopper to forget (repeatable)")
    ap.add_argument("--url", default=None, help="the running serving app, e.g. http://127.0.0.1:8000")
    ap.add_argument("--artifacts", default="artifacts")
    ap.add_argument("--state", default="state")
    ap.add_argument("--runs", default="runs", help="evaluation runs (python -m jobs.evaluate)")
    ns = ap.parse_args(argv)
    users = [u for u in ns.user_id if u.strip()]
    if not users:
        ap.error("--user-id: give at least one non-blank user id")
    for root in (ns.artifacts, ns.runs, ns.state):
        if A.is_uri(root):
            ap.error(f"{root}: forget_user works on local folders; copy the artifacts down or run it where they are")
    artifacts, runs, state = Path(ns.artifacts), Path(ns.runs), Path(ns.state)

    print(f"forgetting {len(users)} shopper(s)", flush=True)
    for u in users:
        out = None
        if ns.url:
            try:
                out = forget_in_serving(ns.url, u)
            except RuntimeError as e:
                print(f"  serving: {e}", file=sys.stderr)
                return 2
        if out is None:
            out = forget_offline(state / "profiles", u)
            where = "state folder (no app answered)" if ns.url else "state folder"
        else:
            where = ns.url
        print(f"  serving ({where}): {out['events_removed']} logged events, profile removed: "
              f"{bool(out['profile_removed'])}", flush=True)
    report = redact_users([artifacts, runs], users)
    print(f"  artifacts: {report.rows_removed} rows removed from {len(report.files_rewritten)} of "
          f"{report.files_scanned} Parquet files under {artifacts} and {runs}", flush=True)
    left = find_bytes([artifacts, runs, state], users)
    if left:
        print("NOT DONE: an id still occurs in:\n  " + "\n  ".join(left[:50]), file=sys.stderr)
        return 1
    print(f"  verified: no byte of the id(s) under {artifacts}, {runs} and {state}")
    logs = source_logs([artifacts, runs])
    if logs:
        print("  your source logs were not changed; remove the shopper(s) there too, or the next feature build "
              "brings them back:\n    " + "\n    ".join(logs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
