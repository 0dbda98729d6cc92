"""Durable nearline profile state: the event log, a profile snapshot, and a bounded in-memory cache.

Writes: `append(events)` de-duplicates by event_id, appends the new events to the RecordLog
(fsynced) and only then folds them into the profiles, so the caller may acknowledge as soon as it
returns and the very next `get` sees the change.

Snapshot: a SQLite file (profiles.sqlite) with one JSON row per user carrying the newest log seq
folded into it, and meta.applied_seq, the seq up to which every profile is written out. On open,
the log tail after applied_seq is replayed; an event is folded only into a profile whose own seq
is below the event's, so a profile written out early (evicted) is never folded twice. Nothing
acknowledged is lost: acknowledged means in the log, and the log is replayed.

Memory: at most `max_users_in_memory` profiles are held; the least recently used is written to the
snapshot and dropped, and loaded again on its next request. Event ids are remembered for
de-duplication over a bounded window (features/profiles/dedup.py), persisted with the snapshot.

Start-up reads the snapshot and only the log after applied_seq. Retention: after each snapshot,
log segments it wholly covers are deleted once older than `log_retention_s` (and the oldest
covered ones while the log is over `log_retention_bytes`), so the log does not grow for ever.

Forgetting a user deletes the profile row (with SQLite's secure_delete, so the bytes are zeroed,
and a rollback journal that is deleted after each commit), and rewrites the log segments without
the user's events.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from features.data import schema as S
from features.profiles.dedup import DedupWindow
from features.profiles.eventlog import RecordLog, TornTail
from features.profiles.events import RECEIVED_US, TS_US, Lookup, fold_record
from features.profiles.profile import Profile, ProfileParams

DAY_S = 86_400.0


@dataclass(frozen=True)
class StateLimits:
    """Bounds on the state that grows with traffic (profiles.limits in serving/config.yaml)."""

    dedup_window_s: float = 7 * DAY_S  # a retried event_id within this is a duplicate
    dedup_max_ids: int = 1_000_000  # and at most this many ids are remembered (about 100 MB)
    log_segment_bytes: int = 64 << 20  # the event log rolls over to a new segment file at this size
    log_retention_s: float | None = 7 * DAY_S  # segments a snapshot covers are deleted after this; None: kept
    log_retention_bytes: int | None = None  # and the oldest covered ones beyond this total; None: no cap

    def __post_init__(self) -> None:
        if self.log_retention_s is not None and self.log_retention_s < 0:
            raise ValueError(f"profiles.limits.log_retention_s must be >= 0 or null, got {self.log_retention_s}")
        if self.log_retention_bytes is not None and self.log_retention_bytes < 0:
            raise ValueError(f"profiles.limits.log_retention_bytes must be >= 0 or null, got {self.log_retention_bytes}")
        DedupWindow(self.dedup_window_s, self.dedup_max_ids)  # validates both


class ProfileStore:
    """See the module doc. Thread-safe: one lock around every method."""

    def __init__(self, state_dir: str | Path, params: ProfileParams, lookup: Lookup,
                 max_users_in_memory: int = 100_000, snapshot_every_events: int = 5_000,
                 snapshot_every_s: float = 30.0, fsync: bool = True, limits: StateLimits = StateLimits(),
                 clock: Callable[[], float] = time.time) -> None:
        if max_users_in_memory < 1:
            raise ValueError(f"max_users_in_memory must be >= 1, got {max_users_in_memory}")
        self.params, self.lookup = params, lookup
        self.dir = Path(state_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_users = max_users_in_memory
        self.snapshot_every_events = snapshot_every_events
        self.snapshot_every_s = snapshot_every_s
        self.limits = limits
        self.clock = clock
        self._lock = threading.RLock()
        self._cache: OrderedDict[str, Profile] = OrderedDict()
        self._dirty: set[str] = set()
        self.db = _open_snapshot(self.dir)
        self.log = RecordLog(self.dir / "events", segment_bytes=limits.log_segment_bytes, fsync=fsync)
        self.stats = {"evicted": 0, "loaded": 0, "snapshots": 0, "replayed": 0, "duplicates": 0,
                      "segments_dropped": 0}
        self.dedup = DedupWindow(limits.dedup_window_s, limits.dedup_max_ids)
        self.applied_seq = int(self._meta("applied_seq") or 0)
        t0 = time.perf_counter()
        self.dedup.load(self.db, self.clock())
        for rec in self.log.read_after(self.applied_seq):  # the snapshot holds everything before
            self.dedup.add(rec[S.EVENT_ID], rec[S.USER_ID], rec.get(RECEIVED_US, rec[TS_US]) / 1e6)
            self._fold(rec)
            self.stats["replayed"] += 1
        self.replay_s = time.perf_counter() - t0
        self._since_snapshot = self.stats["replayed"]
        self._last_snapshot = time.monotonic()

    # --- meta --------------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @property
    def torn(self) -> list[TornTail]:
        return self.log.torn

    @property
    def seeded_from(self) -> str | None:
        return self._meta("seeded_from")

    # --- seeding -----------------------------------------------------------------------------
    def seed(self, rows: Iterable[Profile], source: str) -> int:
        """Write the seed profiles of a features version `source` once (a later call with the same
        source is a no-op); returns how many were written. A new version (the next batch run, or
        another shop's data served from the same state) replaces every stored profile that is a
        seed: its users get their new seed, the others are removed (another shop's shoppers are
        not known here any more); a shopper with live events keeps the nearline profile, so
        nothing the API acknowledged is dropped."""
        with self._lock:
            if self.seeded_from == source:
                return 0
            self.snapshot()  # every profile in the table, each with the newest log seq folded into it
            live = {u for u, seq in self.db.execute("SELECT user_id, seq FROM profiles WHERE seq > 0")}
            n = 0
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM profiles WHERE seq = 0")  # the previous version's seeds
            for prof in rows:
                if prof.user_id in live:
                    continue
                self.db.execute("INSERT OR REPLACE INTO profiles VALUES (?, ?, ?)",
                                (prof.user_id, prof.seq, json.dumps(prof.to_dict())))
                n += 1
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('seeded_from', ?)", (source,))
            self.db.execute("COMMIT")
            self._cache.clear()  # all clean after the snapshot: profiles load again from the table
            return n

    # --- reading -----------------------------------------------------------------------------
    def _load(self, user_id: str, create: bool) -> Profile | None:
        prof = self._cache.get(user_id)
        if prof is not None:
            self._cache.move_to_end(user_id)
            return prof
        row = self.db.execute("SELECT data FROM profiles WHERE user_id = ?", (user_id,)).fetchone()
        if row is not None:
            prof = Profile.from_dict(json.loads(row[0]))
            self.stats["loaded"] += 1
        elif create:
            prof = Profile(user_id)
        else:
            return None
        self._cache[user_id] = prof
        self._evict()
        return prof

    def _evict(self) -> None:
        while len(self._cache) > self.max_users:
            user_id, prof = self._cache.popitem(last=False)
            if user_id in self._dirty:
                self.db.execute("INSERT OR REPLACE INTO profiles VALUES (?, ?, ?)",
                                (user_id, prof.seq, json.dumps(prof.to_dict())))
                self._dirty.discard(user_id)
            self.stats["evicted"] += 1

    def get(self, user_id: str) -> Profile | None:
        """The user's profile, or None for a user with no events and no seed."""
        with self._lock:
            return self._load(user_id, create=False)

    def in_memory(self) -> int:
        return len(self._cache)

    def known_event_ids(self) -> int:
        """Event ids in the de-duplication window."""
        return len(self.dedup)

    # --- writing -----------------------------------------------------------------------------
    def _fold(self, rec: dict[str, Any]) -> None:
        prof = self._load(rec[S.USER_ID], create=True)
        assert prof is not None
        if rec["seq"] <= prof.seq:
            return
        fold_record(prof, rec, self.params, self.lookup)
        prof.seq = rec["seq"]
        self._dirty.add(prof.user_id)

    def append(self, events: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
        """Log then fold validated events; returns (accepted event ids, duplicate event ids).

        Each event: event_id (None: a new uuid), ts_us, user_id, event_type, item_id, query,
        session_id, quantity, price, and for searches optionally query_vector (base64 float32).
        A duplicate event_id (already in the log, or twice in this batch) is not applied again.
        """
        with self._lock:
            fresh: list[dict[str, Any]] = []
            dups: list[str] = []
            batch_ids: set[str] = set()
            now = self.clock()
            for ev in events:
                rec = dict(ev)
                rec[S.EVENT_ID] = rec.get(S.EVENT_ID) or uuid.uuid4().hex
                if rec[S.EVENT_ID] in self.dedup or rec[S.EVENT_ID] in batch_ids:
                    dups.append(rec[S.EVENT_ID])
                    continue
                batch_ids.add(rec[S.EVENT_ID])
                rec[RECEIVED_US] = int(now * 1e6)
                fresh.append(rec)
            self.stats["duplicates"] += len(dups)
            if fresh:
                self.log.append(fresh)  # durable from here on
                for rec in fresh:
                    self.dedup.add(rec[S.EVENT_ID], rec[S.USER_ID], now)
                    self._fold(rec)
                self._since_snapshot += len(fresh)
                if (self._since_snapshot >= self.snapshot_every_events
                        or time.monotonic() - self._last_snapshot >= self.snapshot_every_s):
                    self.snapshot()
            return [r[S.EVENT_ID] for r in fresh], dups

    def snapshot(self) -> int:
        """Write every changed profile, the de-duplication window and applied_seq in one
        transaction, then apply the log retention; returns profile rows written."""
        with self._lock:
            now = self.clock()
            self.db.execute("BEGIN")
            n = 0
            for user_id in list(self._dirty):
                prof = self._cache.get(user_id)
                if prof is not None:
                    self.db.execute("INSERT OR REPLACE INTO profiles VALUES (?, ?, ?)",
                                    (user_id, prof.seq, json.dumps(prof.to_dict())))
                    n += 1
            self.dedup.save(self.db, now)
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('applied_seq', ?)", (str(self.log.last_seq),))
            self.db.execute("COMMIT")
            self._dirty.clear()
            self.applied_seq = self.log.last_seq
            self._since_snapshot = 0
            self._last_snapshot = time.monotonic()
            self.stats["snapshots"] += 1
            lim = self.limits
            if lim.log_retention_s is not None or lim.log_retention_bytes is not None:
                dropped = self.log.drop_through(self.applied_seq, lim.log_retention_s, lim.log_retention_bytes)
                self.stats["segments_dropped"] += len(dropped)
            return n

    def forget(self, user_id: str) -> dict[str, int] | None:
        """Remove the user's profile, logged events and event ids; None when the user is unknown."""
        with self._lock:
            in_cache = self._cache.pop(user_id, None) is not None
            self._dirty.discard(user_id)
            removed, rows, gone_ids = _erase(self.db, self.log, user_id)
            self.dedup.discard(gone_ids)
            if not (in_cache or rows or removed):
                return None
            return {"events_removed": removed, "profile_removed": int(bool(in_cache or rows))}

    def close(self) -> None:
        with self._lock:
            self.snapshot()
            self.db.close()
            self.log.close()


def _open_snapshot(state_dir: Path) -> sqlite3.Connection:
    """The snapshot's SQLite file with its tables; secure_delete and a rollback journal deleted
    after each commit, so removed rows leave no bytes behind."""
    db = sqlite3.connect(str(state_dir / "profiles.sqlite"), check_same_thread=False, isolation_level=None)
    for pragma in ("journal_mode=DELETE", "secure_delete=ON", "synchronous=FULL"):
        db.execute(f"PRAGMA {pragma}")
    db.execute("CREATE TABLE IF NOT EXISTS profiles (user_id TEXT PRIMARY KEY, seq INTEGER, data TEXT)")
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
    DedupWindow.create_table(db)
    return db


def _erase(db: sqlite3.Connection, log: RecordLog, user_id: str) -> tuple[int, int, list[str]]:
    """Delete the user's profile row, logged events and persisted event ids, leaving no free page
    or journal with their bytes; returns (events removed, profile rows removed, event ids)."""
    rows = db.execute("DELETE FROM profiles WHERE user_id = ?", (user_id,)).rowcount
    gone_ids: list[str] = []

    def select(rec: dict[str, Any]) -> bool:
        if rec.get(S.USER_ID) == user_id:
            gone_ids.append(rec[S.EVENT_ID])
            return True
        return False

    removed = log.remove(select)
    gone_ids += DedupWindow.delete_user(db, user_id)
    if rows or removed or gone_ids:
        db.execute("VACUUM")  # no free page keeps the old row
    return removed, rows, gone_ids


def forget_offline(state_dir: str | Path, user_id: str) -> dict[str, int]:
    """ProfileStore.forget on the files of a store no server has open (jobs.forget_user without a
    running app): nothing is replayed, only the user's rows and records are removed."""
    d = Path(state_dir)
    if not (d / "profiles.sqlite").is_file():
        return {"events_removed": 0, "profile_removed": 0}
    db = _open_snapshot(d)
    try:
        log = RecordLog(d / "events")
        try:
            removed, rows, _ = _erase(db, log, user_id)
        finally:
            log.close()
    finally:
        db.close()
    return {"events_removed": removed, "profile_removed": int(bool(rows))}
