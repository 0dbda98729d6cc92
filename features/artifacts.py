"""Versioned artifacts: artifacts/<kind>/<version>/ with a manifest.json written last.

A version is *complete* exactly when its manifest.json exists: jobs write every output first and
the manifest at the end, so a reader never picks up a half-written version. Paths may be local
or any pyarrow filesystem URI (s3://bucket/prefix, gs://..., file:///...).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

if TYPE_CHECKING:
    import polars as pl

MANIFEST = "manifest.json"
_URI_SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "abfs://", "abfss://", "file://", "az://")


def is_uri(path: str) -> bool:
    return str(path).startswith(_URI_SCHEMES)


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI. Local paths become absolute."""
    path = str(path)
    if is_uri(path):
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs, inner
    return pafs.LocalFileSystem(), str(Path(path).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *[p.strip("/") for p in parts]])


def new_version(now: dt.datetime | None = None) -> str:
    """Sortable, unique version name: 20261122T105000Z-3f9a."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S')}Z-{secrets.token_hex(2)}"


def git_commit(repo: str | Path | None = None) -> str | None:
    """The current commit, or INTENTLY_GIT_COMMIT when there is no checkout (e.g. a Ray job's
    uploaded working dir), or None."""
    env = os.environ.get("INTENTLY_GIT_COMMIT")
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo or Path(__file__).resolve().parent.parent,
            capture_output=True, text=True, timeout=10,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return env


def list_files(path: str) -> list[tuple[pafs.FileSystem, str]]:
    """Data files under a file-or-directory path (hidden and _-prefixed files skipped), sorted."""
    fs, inner = resolve(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path}: no such file or directory")
    if info.type == pafs.FileType.File:
        return [(fs, inner)]
    sel = pafs.FileSelector(inner, recursive=True)
    files = [
        f.path for f in fs.get_file_info(sel)
        if f.type == pafs.FileType.File and not any(part.startswith((".", "_")) for part in f.path[len(inner):].split("/") if part)
    ]
    if not files:
        raise FileNotFoundError(f"{path}: directory holds no data files")
    return [(fs, p) for p in sorted(files)]


def fingerprint(path: str) -> dict[str, Any]:
    """Content hash (sha256 over every file's bytes, in path order), file count and bytes."""
    h = hashlib.sha256()
    n_bytes = 0
    files = list_files(path)
    for fs, p in files:
        h.update(p.rsplit("/", 1)[-1].encode())
        with fs.open_input_stream(p) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                n_bytes += len(chunk)
    return {"path": str(path), "files": len(files), "bytes": n_bytes, "sha256": h.hexdigest()}


def write_manifest(version_dir: str, manifest: dict[str, Any]) -> str:
    """Write manifest.json (the completion marker) atomically where the filesystem allows."""
    fs, inner = resolve(version_dir)
    fs.create_dir(inner, recursive=True)
    data = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
    final = join(inner, MANIFEST)
    tmp = join(inner, f".{MANIFEST}.tmp")
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, final)
    return final


def manifest(kind: str, version: str, config: dict, inputs: dict, outputs: dict, metrics: dict) -> dict[str, Any]:
    return {
        "kind": kind,
        "version": version,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "git_commit": git_commit(),
        "config": config,
        "inputs": inputs,
        "outputs": outputs,
        "metrics": metrics,
    }


def latest_complete(root: str, kind: str) -> str | None:
    """Path of the newest version of `kind` under `root` that has a manifest, or None."""
    fs, inner = resolve(root)
    base = join(inner, kind)
    if fs.get_file_info(base).type != pafs.FileType.Directory:
        return None
    versions = sorted(
        (i.path for i in fs.get_file_info(pafs.FileSelector(base)) if i.type == pafs.FileType.Directory),
        reverse=True,
    )
    for v in versions:
        if fs.get_file_info(join(v, MANIFEST)).type == pafs.FileType.File:
            return v if not is_uri(root) else join(root, kind, v.rsplit("/", 1)[-1])
    return None


def read_manifest(version_dir: str) -> dict[str, Any]:
    fs, inner = resolve(version_dir)
    with fs.open_input_stream(join(inner, MANIFEST)) as f:
        return json.loads(f.read().decode())


# --- storage by URI -----------------------------------------------------------------------------
# FAISS, LightGBM and Hugging Face read and write local files only. A version under a URI is
# therefore written into a local staging folder and uploaded (`staged`), and read from a local
# copy made once per version (`local_copy`); versions never change once their manifest exists.
CACHE_ENV = "INTENTLY_CACHE_DIR"


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "intently")


def read_parquet(path: str, columns: list[str] | None = None) -> "pl.DataFrame":
    """A Parquet file or folder (local or URI) as one polars frame."""
    import polars as pl
    import pyarrow.dataset as pads

    fs, inner = resolve(path)
    table = pads.dataset(inner, filesystem=fs, format="parquet").to_table(columns=columns)
    return pl.from_arrow(table)  # type: ignore[return-value]


def upload_dir(local: str | Path, dest: str) -> None:
    """Copy a local folder's files under `dest` (a URI or local path)."""
    fs, inner = resolve(dest)
    fs.create_dir(inner, recursive=True)
    pafs.copy_files(str(Path(local).resolve()), inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


class staged:
    """`with staged(version_dir) as d:` write files into local folder d; on success they land in
    version_dir (uploaded when it is a URI, written in place when local)."""

    def __init__(self, dest: str) -> None:
        self.dest = str(dest)
        self._tmp: Any = None

    def __enter__(self) -> Path:
        if not is_uri(self.dest):
            Path(self.dest).mkdir(parents=True, exist_ok=True)
            return Path(self.dest)
        import tempfile

        self._tmp = tempfile.TemporaryDirectory(prefix="intently-stage-")
        return Path(self._tmp.name)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._tmp is None:
            return
        try:
            if exc_type is None:
                upload_dir(self._tmp.name, self.dest)
        finally:
            self._tmp.cleanup()


def local_copy(path: str) -> str:
    """A local folder holding `path`'s files: `path` itself when local, else a copy under the
    cache (INTENTLY_CACHE_DIR, default ~/.cache/intently), downloaded once and marked complete."""
    if not is_uri(path):
        return path
    key = hashlib.sha256(path.rstrip("/").encode()).hexdigest()[:16]
    dest = cache_root() / "artifacts" / f"{path.rstrip('/').rsplit('/', 1)[-1]}-{key}"
    done = dest / ".complete"
    if not done.is_file():
        import shutil
        import tempfile

        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
        fs, inner = resolve(path)
        pafs.copy_files(inner, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        (tmp / ".complete").write_text(path)
        try:
            tmp.rename(dest)
        except OSError:  # another process finished first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)
