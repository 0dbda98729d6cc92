"""Stable ids for events that come without one (features/data/mapping.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from features.data import schema as S


class EventIds:
    """Stable ids for events without one, across the chunks of one import: a hash of user, time, type and
    item, plus ":n" for the n-th identical line before it in the file (repeated lines stay distinct, a
    re-import gives the same ids); a 64-bit key hash and a count per distinct line seen (12 bytes each)."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.uint64)  # sorted
        self.counts = np.zeros(0, np.uint32)

    def _find(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(insertion positions, clipped positions, found) of hashes `h` among the keys seen."""
        pos = np.searchsorted(self.keys, h)
        if not len(self.keys):
            return pos, pos, np.zeros(len(h), bool)
        at = np.minimum(pos, len(self.keys) - 1)
        return pos, at, (pos < len(self.keys)) & (self.keys[at] == h)

    def __call__(self, df: pl.DataFrame) -> pl.Series:
        who = S.USER_ID if S.USER_ID in df.columns or S.SESSION_ID not in df.columns else S.SESSION_ID  # a guest log
        key = pl.concat_str([pl.col(c).cast(pl.String).fill_null("") if c in df.columns else pl.lit("")
                             for c in (who, S.TS, S.EVENT_TYPE, S.ITEM_ID)], separator="\x1f")
        k = df.select(key.alias("k"), key.hash(seed=7).alias("h"), pl.int_range(pl.len()).over(key).alias("n"))
        h = k.get_column("h").to_numpy()
        _, at, seen = self._find(h)
        n = k.get_column("n").to_numpy() + np.where(seen, self.counts[at] if len(self.keys) else 0, 0)
        uh, uc = np.unique(h, return_counts=True)
        pos, at, old = self._find(uh)
        np.add.at(self.counts, at[old], uc[old].astype(np.uint32))
        self.keys = np.insert(self.keys, pos[~old], uh[~old])
        self.counts = np.insert(self.counts, pos[~old], uc[~old].astype(np.uint32))
        return pl.Series(S.EVENT_ID, [hashlib.sha1(s.encode()).hexdigest()[:20] + (f":{c}" if c else "")
                                      for s, c in zip(k.get_column("k").to_list(), n.tolist())], dtype=pl.String)
