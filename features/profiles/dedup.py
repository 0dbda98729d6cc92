"""A bounded, persisted set of recently seen event ids: the event log's de-duplication window.

An event id is remembered for `window_s` seconds after it was received, and at most `max_ids` are
remembered (the oldest forgotten first), so memory stays flat under any stream of new ids. A
client retry arrives seconds or minutes after the original, well inside the window; an id seen
again after the window is accepted as a new event (documented in docs/reliability.md).

Persistence: ids received since the last `save` are written to a SQLite table (event_id,
user_key, received_us) inside the caller's transaction, and rows that fell out of the window are
deleted there, so a restart loads the window from the table plus whatever the log tail holds.
`user_key` is a hash of the user id, so forgetting a user can delete the user's ids without the
table ever holding the user id itself.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import OrderedDict


def user_key(user_id: str) -> str:
    return hashlib.sha256(user_id.encode()).hexdigest()[:24]


class DedupWindow:
    """See the module doc. Not thread-safe: the ProfileStore's lock guards it."""

    TABLE = "dedup"

    def __init__(self, window_s: float, max_ids: int) -> None:
        if window_s <= 0 or max_ids < 1:
            raise ValueError(f"profiles.dedup_window_s must be > 0 and dedup_max_ids >= 1; got {window_s}, {max_ids}")
        self.window_s, self.max_ids = float(window_s), int(max_ids)
        self._seen: OrderedDict[str, float] = OrderedDict()  # event id -> received (epoch s), oldest first
        self._unsaved: dict[str, tuple[str, int]] = {}  # event id -> (user_key, received_us)

    def __len__(self) -> int:
        return len(self._seen)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._seen

    def add(self, event_id: str, user_id: str, received_s: float, saved: bool = False) -> None:
        self._seen[event_id] = received_s
        self._seen.move_to_end(event_id)
        if not saved:
            self._unsaved[event_id] = (user_key(user_id), int(received_s * 1e6))
        self.prune(received_s)

    def prune(self, now_s: float) -> None:
        """Forget ids older than the window, then the oldest beyond max_ids."""
        cutoff = now_s - self.window_s
        while self._seen:
            eid, t = next(iter(self._seen.items()))
            if t >= cutoff and len(self._seen) <= self.max_ids:
                break
            del self._seen[eid]
            self._unsaved.pop(eid, None)

    def discard(self, event_ids: list[str]) -> None:
        for eid in event_ids:
            self._seen.pop(eid, None)
            self._unsaved.pop(eid, None)

    # --- persistence (the caller owns the connection and the transaction) ---------------------
    @classmethod
    def create_table(cls, db: sqlite3.Connection) -> None:
        db.execute(f"CREATE TABLE IF NOT EXISTS {cls.TABLE} (event_id TEXT PRIMARY KEY, user_key TEXT, "
                   "received_us INTEGER)")
        db.execute(f"CREATE INDEX IF NOT EXISTS {cls.TABLE}_received ON {cls.TABLE} (received_us)")
        db.execute(f"CREATE INDEX IF NOT EXISTS {cls.TABLE}_user ON {cls.TABLE} (user_key)")

    def load(self, db: sqlite3.Connection, now_s: float) -> int:
        """Read the persisted window (newest max_ids within window_s); returns how many."""
        rows = db.execute(f"SELECT event_id, received_us FROM {self.TABLE} WHERE received_us >= ? "
                          "ORDER BY received_us DESC LIMIT ?",
                          (int((now_s - self.window_s) * 1e6), self.max_ids)).fetchall()
        for eid, us in reversed(rows):
            self._seen[eid] = us / 1e6
        return len(rows)

    def save(self, db: sqlite3.Connection, now_s: float) -> None:
        """Write ids received since the last save and delete rows out of the window (inside the
        caller's transaction)."""
        self.prune(now_s)
        db.executemany(f"INSERT OR REPLACE INTO {self.TABLE} VALUES (?, ?, ?)",
                       [(eid, uk, us) for eid, (uk, us) in self._unsaved.items()])
        self._unsaved.clear()
        db.execute(f"DELETE FROM {self.TABLE} WHERE received_us < ?", (int((now_s - self.window_s) * 1e6),))
        db.execute(f"DELETE FROM {self.TABLE} WHERE event_id IN (SELECT event_id FROM {self.TABLE} "
                   "ORDER BY received_us DESC LIMIT -1 OFFSET ?)", (self.max_ids,))

    @classmethod
    def delete_user(cls, db: sqlite3.Connection, user_id: str) -> list[str]:
        """Delete the user's persisted ids from the table; returns them."""
        uk = user_key(user_id)
        ids = [r[0] for r in db.execute(f"SELECT event_id FROM {cls.TABLE} WHERE user_key = ?", (uk,))]
        db.execute(f"DELETE FROM {cls.TABLE} WHERE user_key = ?", (uk,))
        return ids
