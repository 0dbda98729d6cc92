"""A durable, append-only record log in numbered segment files (the serving event and item logs).

Every record is one line `<crc32 hex> <json>\\n`, where the JSON carries a monotonically rising
`seq`. `append` writes, flushes and fsyncs before it returns, so a caller that acknowledges after
`append` never acknowledges something a crash can take back. Segments are named by the first seq
they hold (`segment-00000000000000000001.log`) and roll over at `segment_bytes`.

Opening a log scans every segment. A record that is cut short or whose checksum does not match can
only be the unacknowledged tail of a write that was interrupted (appends are sequential and
fsynced), so the segment is truncated there and the discarded bytes are reported in `torn`.
A bad record followed by good ones is real corruption, not a torn tail; opening refuses it with
the segment and offset rather than guessing.

`remove` rewrites the segments without the records a predicate selects (forgetting a user); each
rewritten segment replaces the old one atomically (write to a temp file, fsync, rename). Seqs are
kept, so positions held elsewhere (a profile snapshot's "applied up to seq N") stay valid.

Several processes may append to one log (e.g. replicas on one node): writers take an exclusive
`flock` on the directory's lock file, and `refresh` lets a reader pick up what others appended.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

SEGMENT_PREFIX = "segment-"
SEGMENT_SUFFIX = ".log"
LOCK_FILE = ".lock"
SEQ = "seq"


class LogCorruptError(RuntimeError):
    """A record in the middle of the log is unreadable (not a torn tail)."""


@dataclass(frozen=True)
class TornTail:
    segment: str
    offset: int  # where the segment was truncated
    discarded_bytes: int


def _segment_name(first_seq: int) -> str:
    return f"{SEGMENT_PREFIX}{first_seq:020d}{SEGMENT_SUFFIX}"


def _encode(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    return b"%08x " % zlib.crc32(body) + body + b"\n"


def _decode(line: bytes) -> dict[str, Any] | None:
    """The record of one complete line, or None when the line is damaged."""
    if len(line) < 10 or line[8:9] != b" " or not line.endswith(b"\n"):
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        rec = json.loads(body)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get(SEQ), int) else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RecordLog:
    """Append-only log of JSON records with a rising `seq` (see the module doc)."""

    def __init__(self, directory: str | Path, segment_bytes: int = 64 << 20, fsync: bool = True) -> None:
        if segment_bytes < 1024:
            raise ValueError(f"segment_bytes must be >= 1024, got {segment_bytes}")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self._lock = threading.Lock()
        self._lock_fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        self.torn: list[TornTail] = []
        self.last_seq = 0
        # what this process has read: segment name -> byte offset (for refresh)
        self._read_pos: dict[str, tuple[int, int]] = {}  # segment -> (byte offset, inode)
        self._pending: list[dict[str, Any]] = []
        with self._exclusive():
            self._records_on_open: list[dict[str, Any]] = list(self._scan(repair=True))

    # --- locking ------------------------------------------------------------------------------
    class _Flock:
        def __init__(self, log: "RecordLog") -> None:
            self.log = log

        def __enter__(self) -> None:
            self.log._lock.acquire()
            fcntl.flock(self.log._lock_fd, fcntl.LOCK_EX)

        def __exit__(self, *exc: Any) -> None:
            fcntl.flock(self.log._lock_fd, fcntl.LOCK_UN)
            self.log._lock.release()

    def _exclusive(self) -> "RecordLog._Flock":
        return RecordLog._Flock(self)

    # --- reading ------------------------------------------------------------------------------
    def segments(self) -> list[Path]:
        return sorted(p for p in self.dir.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"))

    def _scan(self, repair: bool) -> Iterator[dict[str, Any]]:
        """Read new records of every segment from this process's last position.

        A segment rewritten by `remove` (new inode) is read again from its start, skipping the
        seqs already seen."""
        segs = self.segments()
        for i, seg in enumerate(segs):
            inode = seg.stat().st_ino
            start, seen_inode = self._read_pos.get(seg.name, (0, inode))
            rewritten = seen_inode != inode
            if rewritten:
                start = 0
            with open(seg, "rb") as f:
                f.seek(start)
                data = f.read()
            pos = 0
            while pos < len(data):
                end = data.find(b"\n", pos)
                line = data[pos:] if end < 0 else data[pos:end + 1]
                rec = _decode(line)
                if rec is None:
                    rest = data[pos:]
                    later_valid = any(_decode(x + b"\n") is not None for x in rest.split(b"\n")[1:] if x)
                    if repair and i == len(segs) - 1 and not later_valid:
                        with open(seg, "r+b") as f:
                            f.truncate(start + pos)
                            os.fsync(f.fileno())
                        self.torn.append(TornTail(seg.name, start + pos, len(rest)))
                        break
                    if not repair and end < 0:  # another writer is mid-append; read it next time
                        break
                    raise LogCorruptError(f"{seg}: unreadable record at byte {start + pos} followed by valid records")
                pos += len(line)
                if rec[SEQ] <= self.last_seq:
                    if rewritten:
                        continue
                    raise LogCorruptError(f"{seg}: seq {rec[SEQ]} at byte {start + pos - len(line)} "
                                          f"is not above {self.last_seq}")
                self.last_seq = rec[SEQ]
                yield rec
            self._read_pos[seg.name] = (start + pos, inode)

    def records_on_open(self) -> list[dict[str, Any]]:
        """Every record found when the log was opened (then released)."""
        out, self._records_on_open = self._records_on_open, []
        return out

    def refresh(self) -> list[dict[str, Any]]:
        """Records other processes appended since this one last read (also those `append` read
        past while taking the next seq)."""
        with self._lock:
            out, self._pending = self._pending + list(self._scan(repair=False)), []
            return out

    def read_after(self, seq: int) -> Iterator[dict[str, Any]]:
        """Every record with a seq above `seq`, oldest first (a fresh read of the files)."""
        segs = self.segments()
        for i, seg in enumerate(segs):
            nxt = int(segs[i + 1].name[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)]) if i + 1 < len(segs) else None
            if nxt is not None and nxt <= seq + 1:
                continue  # the whole segment is at or below seq
            with open(seg, "rb") as f:
                for line in f:
                    rec = _decode(line)
                    if rec is None:
                        break  # a concurrent writer's unfinished line
                    if rec[SEQ] > seq:
                        yield rec

    # --- writing ------------------------------------------------------------------------------
    def append(self, records: list[dict[str, Any]]) -> list[int]:
        """Durably append records (each gets the next seq, stored in the record); returns the seqs.

        Other writers' records are read first (`refresh`), so seqs stay unique across processes;
        those records are returned by the next `refresh` call as usual.
        """
        if not records:
            return []
        with self._exclusive():
            self._pending.extend(self._scan(repair=False))
            segs = self.segments()
            seg = segs[-1] if segs else None
            if seg is None or seg.stat().st_size >= self.segment_bytes:
                seg = self.dir / _segment_name(self.last_seq + 1)
                new_file = True
            else:
                new_file = False
            seqs = []
            chunks = []
            for rec in records:
                self.last_seq += 1
                rec[SEQ] = self.last_seq
                seqs.append(self.last_seq)
                chunks.append(_encode(rec))
            data = b"".join(chunks)
            with open(seg, "ab") as f:
                f.write(data)
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
            if new_file and self.fsync:
                _fsync_dir(self.dir)
            self._read_pos[seg.name] = (self._read_pos.get(seg.name, (0, 0))[0] + len(data), seg.stat().st_ino)
        return seqs

    def remove(self, predicate: Callable[[dict[str, Any]], bool]) -> int:
        """Rewrite every segment without the records `predicate` selects; returns how many went."""
        removed = 0
        with self._exclusive():
            for seg in self.segments():
                kept: list[bytes] = []
                n_seg = 0
                with open(seg, "rb") as f:
                    for line in f:
                        rec = _decode(line)
                        if rec is not None and predicate(rec):
                            n_seg += 1
                        else:
                            kept.append(line)
                if not n_seg:
                    continue
                tmp = seg.with_suffix(".rewrite")
                data = b"".join(kept)
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, seg)
                _fsync_dir(self.dir)
                self._read_pos[seg.name] = (len(data), seg.stat().st_ino)
                removed += n_seg
        return removed

    def close(self) -> None:
        try:
            os.close(self._lock_fd)
        except OSError:
            pass
