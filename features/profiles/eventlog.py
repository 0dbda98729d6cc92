"""A durable, append-only record log in numbered segment files (the serving event and item logs).

Every record is one line `<crc32 hex> <json>\\n`, where the JSON carries a monotonically rising
`seq`. `append` writes, flushes and fsyncs before it returns, so a caller that acknowledges after
`append` never acknowledges something a crash can take back. Segments are named by the first seq
they hold (`segment-00000000000000000001.log`) and roll over at `segment_bytes`.

Opening a log reads only its last segment (to find the newest seq), so start-up costs what the
tail costs, not what the whole history does; `read_after(seq)` then reads what a caller still
needs. A record that is cut short or whose checksum does not match at the end of the last
segment can only be the unacknowledged tail of a write that was interrupted (appends are
sequential and fsynced), so the segment is truncated there and the discarded bytes are reported
in `torn`. A bad record followed by good ones, or in an older segment, is real corruption, not a
torn tail; reading refuses it with the segment and offset rather than guessing.

`drop_through(seq, ...)` deletes whole segments whose every record is at or below `seq` (a
snapshot already holds their effect), oldest first, by age and total size: the retention policy.

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


def _first_seq(seg: Path) -> int:
    return int(seg.name[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)])


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


def _lines(data: bytes) -> Iterator[tuple[int, bytes, dict[str, Any] | None, bool]]:
    """(offset, line, its record or None when damaged, whether it lacks its newline) per line."""
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        line = data[pos:] if end < 0 else data[pos:end + 1]
        yield pos, line, _decode(line), end < 0
        pos += len(line)


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
            self._open_tail()
        self._open_seq = self.last_seq

    def _open_tail(self) -> None:
        """Find the newest seq from the last non-empty segment (repairing a torn tail there), and
        mark every segment as read, so `refresh` returns only what is appended later."""
        segs = self.segments()
        for seg in segs[:-1]:
            self._read_pos[seg.name] = (seg.stat().st_size, seg.stat().st_ino)
        if segs:
            for _ in self._scan_segments(segs[-1:], repair=True):
                pass
        if self.last_seq == 0 and len(segs) > 1:  # the last segment was empty: the one before ends it
            for rec in self.read_after(0):
                self.last_seq = max(self.last_seq, rec[SEQ])
        if segs and self.last_seq == 0:
            self.last_seq = _first_seq(segs[-1]) - 1

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
        for gone in set(self._read_pos) - {s.name for s in segs}:  # dropped by retention
            del self._read_pos[gone]
        yield from self._scan_segments(segs, repair)

    def _scan_segments(self, segs: list[Path], repair: bool) -> Iterator[dict[str, Any]]:
        for i, seg in enumerate(segs):
            inode = seg.stat().st_ino
            start, seen_inode = self._read_pos.get(seg.name, (0, inode))
            rewritten = seen_inode != inode
            if rewritten:
                start = 0
            with open(seg, "rb") as f:
                f.seek(start)
                data = f.read()
            done = 0  # bytes of `data` read as whole records
            for pos, line, rec, unterminated in _lines(data):
                if rec is None:
                    rest = data[pos:]
                    later_valid = any(_decode(x + b"\n") is not None for x in rest.split(b"\n")[1:] if x)
                    if repair and i == len(segs) - 1 and not later_valid:
                        with open(seg, "r+b") as f:
                            f.truncate(start + pos)
                            os.fsync(f.fileno())
                        self.torn.append(TornTail(seg.name, start + pos, len(rest)))
                        break
                    if not repair and unterminated:  # another writer is mid-append; read it next time
                        break
                    raise LogCorruptError(f"{seg}: unreadable record at byte {start + pos} followed by valid records")
                done = pos + len(line)
                if rec[SEQ] <= self.last_seq:
                    if rewritten:
                        continue
                    raise LogCorruptError(f"{seg}: seq {rec[SEQ]} at byte {start + pos} is not above {self.last_seq}")
                self.last_seq = rec[SEQ]
                yield rec
            self._read_pos[seg.name] = (start + done, inode)

    def records_on_open(self) -> list[dict[str, Any]]:
        """Every record the log held when it was opened (read now, from the files)."""
        return list(self.read_after(0, through=self._open_seq))

    def refresh(self) -> list[dict[str, Any]]:
        """Records other processes appended since this one last read (also those `append` read
        past while taking the next seq)."""
        with self._lock:
            out, self._pending = self._pending + list(self._scan(repair=False)), []
            return out

    def read_after(self, seq: int, through: int | None = None) -> Iterator[dict[str, Any]]:
        """Every record with `seq` < its seq (<= `through`, when given), oldest first, read from
        the files. An unreadable record is corruption (LogCorruptError naming the segment and
        offset), except an unfinished line at the very end, which a concurrent writer is still
        appending."""
        segs = self.segments()
        for i, seg in enumerate(segs):
            nxt = _first_seq(segs[i + 1]) if i + 1 < len(segs) else None
            if nxt is not None and nxt <= seq + 1:
                continue  # the whole segment is at or below seq
            if through is not None and _first_seq(seg) > through:
                return
            with open(seg, "rb") as f:
                data = f.read()
            for pos, _, rec, unterminated in _lines(data):
                if rec is None:
                    if unterminated and i == len(segs) - 1:
                        return  # a writer's unfinished line
                    raise LogCorruptError(f"{seg}: unreadable record at byte {pos}")
                if through is not None and rec[SEQ] > through:
                    return
                if rec[SEQ] > seq:
                    yield rec

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.segments())

    def drop_through(self, seq: int, older_than_s: float | None = None, max_bytes: int | None = None,
                     now: float | None = None) -> list[str]:
        """Delete whole segments whose records all have a seq <= `seq`, oldest first: each one
        last written more than `older_than_s` ago, and then more while the log is over
        `max_bytes`. The newest segment is never dropped. Returns the names dropped."""
        import time

        now = time.time() if now is None else now
        dropped: list[str] = []
        with self._exclusive():
            segs = self.segments()
            total = sum(p.stat().st_size for p in segs)
            for i, seg in enumerate(segs[:-1]):
                if _first_seq(segs[i + 1]) - 1 > seq:
                    break  # this segment holds records the caller still needs
                st = seg.stat()
                old = older_than_s is not None and now - st.st_mtime >= older_than_s
                big = max_bytes is not None and total > max_bytes
                if not (old or big):
                    break
                seg.unlink()
                total -= st.st_size
                self._read_pos.pop(seg.name, None)
                dropped.append(seg.name)
            if dropped:
                _fsync_dir(self.dir)
        return dropped

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
