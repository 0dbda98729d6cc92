"""Forgetting shoppers in batch artifacts: rewrite every Parquet file without their rows, then prove
no byte of their ids is left.

Every artifact table that holds shopper data names the shopper in the canonical `user_id` column
(features users, training examples, quarantined rows, evaluation requests). `redact_users` rewrites
each such file under the given roots without the rows of the given users (write to a temporary
file, fsync, rename: a crash leaves the old file or the new one, never half of one), and notes the
redaction in the version's manifest (counts only: the manifest never names who was forgotten).
`find_bytes` then reads every file under the roots, raw and, for Parquet, decoded, and reports where
an id still occurs, so the caller can refuse to call the job done.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.data import schema as S

MANIFEST = "manifest.json"


@dataclass
class RedactReport:
    files_scanned: int = 0
    files_rewritten: list[str] = field(default_factory=list)
    rows_removed: int = 0


def _parquet_files(roots: list[Path]) -> list[Path]:
    return sorted(p for r in roots if r.exists() for p in r.rglob("*.parquet") if p.is_file())


def redact_users(roots: list[str | Path], user_ids: list[str]) -> RedactReport:
    """Rewrite every Parquet file under `roots` that has rows of `user_ids` in its user_id column."""
    report = RedactReport()
    drop = pa.array(sorted(set(user_ids)), pa.string())
    touched_versions: dict[Path, int] = {}
    paths = [Path(r) for r in roots]
    for path in _parquet_files(paths):
        report.files_scanned += 1
        schema = pq.read_schema(path)
        if S.USER_ID not in schema.names:
            continue
        table = pq.read_table(path)
        col = pc.cast(table.column(S.USER_ID), pa.string())
        hit = pc.fill_null(pc.is_in(col, value_set=drop), False)
        n = pc.sum(hit).as_py() or 0
        if not n:
            continue
        kept = table.filter(pc.invert(hit))
        tmp = path.with_name(path.name + ".redact-tmp")
        pq.write_table(kept, tmp, compression="zstd")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        report.files_rewritten.append(str(path))
        report.rows_removed += n
        version = _version_dir(path, paths)
        if version is not None:
            touched_versions[version] = touched_versions.get(version, 0) + n
    for version, rows in touched_versions.items():
        _note_in_manifest(version, rows, len(user_ids))
    return report


def _version_dir(path: Path, roots: list[Path]) -> Path | None:
    """The nearest folder above `path` (within a root) that holds a manifest."""
    for parent in path.parents:
        if (parent / MANIFEST).is_file():
            return parent
        if parent in roots:
            return None
    return None


def _note_in_manifest(version: Path, rows: int, users: int) -> None:
    m = json.loads((version / MANIFEST).read_text())
    m.setdefault("redactions", []).append({"at": dt.datetime.now(dt.timezone.utc).isoformat(), "users": users,
                                           "rows_removed": rows})
    tmp = version / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(m, indent=2, sort_keys=True))
    os.replace(tmp, version / MANIFEST)


def find_bytes(roots: list[str | Path], needles: list[str]) -> list[str]:
    """Where any needle still occurs under `roots`: "<file>" for raw bytes, "<file>:<column>" for a
    decoded Parquet string column (compressed pages hide raw bytes, so both are read)."""
    found: list[str] = []
    raw = [n.encode() for n in needles]
    for root in (Path(r) for r in roots):
        if not root.exists():
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            if any(n in data for n in raw):
                found.append(str(path))
            if path.suffix == ".parquet":
                found += _parquet_hits(path, needles)
    return found


def _parquet_hits(path: Path, needles: list[str]) -> list[str]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError):
        return []
    out = []
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            if any(pc.any(pc.match_substring(col, n)).as_py() for n in needles):
                out.append(f"{path}:{name}")
        elif pa.types.is_list(col.type) and pa.types.is_string(col.type.value_type):
            flat = pc.list_flatten(col)
            if any(pc.any(pc.match_substring(flat, n)).as_py() for n in needles):
                out.append(f"{path}:{name}")
    return out
