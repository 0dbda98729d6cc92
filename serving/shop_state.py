"""One state folder, one shop: a deploy over another shop's catalog sets the previous online state aside.

The state folder holds what the API accepted: the event log and the shoppers' profiles
(state/profiles) and the items written with PUT /v1/items (state/items). A new batch version of
the same shop keeps it (a profile's live events and an item added since the batch are still
served). But `make demo` followed by `make run EVENTS=<your export>` serves another shop from the
same folder, and its state would leak in: an item the demo's catalog got through the API would be
searched and recommended among the new shop's products, and a shopper id that both shops use would
carry the other shop's live history.

So each deploy records a sample of its catalog (the hashes of `item_id + title`, the smallest
SAMPLE of them) in state/catalog.json; the next deploy compares: when under SAME_SHOP_MIN of that
sample is in the new catalog, it is another shop, and profiles/ and items/ move to
state/previous/<time>/ (nothing is deleted; moving them back restores them). Ids alone would not
tell: two shops' numeric ids overlap (RetailRocket's 1..466867 hold most of Online Retail's stock
codes), their titles do not; a shop renaming a product now and then stays far above the bar. A
shop whose every title changes at once (a mapping that now names the real title column) reads as
another shop too: the message says so, and moving the folders back restores the state.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np

MARKER = "catalog.json"
PARTS = ("profiles", "items")  # what the app writes under the state folder
SAMPLE = 20_000
SAME_SHOP_MIN = 0.05  # share of the previous catalog's sample found in the new one, below which it is another shop


def catalog_hashes(ids: list[str], titles: list[str | None]) -> np.ndarray:
    """A stable 64-bit hash of each item's id and title (stable across runs, versions and machines)."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{i}\x1f{t or ''}".encode(), digest_size=8).digest(), "little")
                     for i, t in zip(ids, titles)], dtype=np.uint64)


def check(state: Path, ids: list[str], titles: list[str | None], now: dt.datetime | None = None) -> str | None:
    """Compare the catalog about to be served with the one the state folder last served; move the
    state aside when it is another shop's. Returns what was done, for the deploy to print (None
    when nothing moved). Records this catalog's sample either way."""
    state.mkdir(parents=True, exist_ok=True)
    hashes = np.unique(catalog_hashes(ids, titles))
    marker = state / MARKER
    said = None
    if marker.exists():
        before = np.array(json.loads(marker.read_text())["sample"], dtype=np.uint64)
        share = float(np.isin(before, hashes).mean()) if len(before) else 1.0
        held = [p for p in PARTS if (state / p).exists()]
        if share < SAME_SHOP_MIN and held:
            stamp = (now or dt.datetime.now(dt.timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
            dest = state / "previous" / stamp
            dest.mkdir(parents=True, exist_ok=True)
            for p in held:
                (state / p).rename(dest / p)
            said = (f"state: {state} held another catalog's online state ({share:.1%} of its items, by id and "
                    f"title, are in this one): moved {', '.join(held)} to {dest}; this shop starts with an "
                    "empty event log and item log. If it is the same shop with its titles mapped anew, stop "
                    f"the server and move them back")
    sample = np.sort(hashes)[:SAMPLE]
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps({"items": len(hashes), "sample": [int(h) for h in sample]}))
    tmp.replace(marker)
    return said


def check_artifacts(state: Path, artifacts: str) -> str | None:
    """`check` for the catalog of the features version the newest index was built from (what the
    deploy will serve); None, and nothing recorded, when there is no index yet."""
    from features import artifacts as A
    from features.data import schema as S

    index = A.latest_complete(artifacts, "index")
    features = index and A.read_manifest(index).get("inputs", {}).get("features", {}).get("path")
    if not features:
        return None
    items = A.read_parquet(A.join(features, "items"), columns=[S.ITEM_ID, S.TITLE])
    return check(state, items.get_column(S.ITEM_ID).to_list(), items.get_column(S.TITLE).to_list())
