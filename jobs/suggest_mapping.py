"""Write a column mapping to start from, guessed from a shop's export (features/data/suggest.py).

    make mapping EVENTS=export/events.csv [ITEMS=export/items.csv] [MAPPING=shop.yaml]
    make mapping EVENTS=clicks.dat,buys.dat          # several event files, each with its own columns
    python -m jobs.suggest_mapping --set events=export/events.csv --set output=shop.yaml

Reads the first rows of each file, prints the mapping with what to check as comments, and writes it
to `output` (never over an existing file unless `overwrite=true`). Then: `make run MAPPING=shop.yaml`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from features.config import ConfigError
from features.data.suggest import suggest, to_yaml
from jobs.common import load_job_config, parse_args, run_job


@dataclass(frozen=True)
class SuggestMappingConfig:
    events: str | None = None   # the shop's events file, folder or URI; several: separated by commas
    items: str | None = None    # its items file (none: the catalog from the events file's product columns)
    output: str = "mapping.yaml"
    encoding: str | None = None  # the files' character set; null: UTF-8, else cp1252 or latin-1 if that reads them
    overwrite: bool = False


def run(cfg: SuggestMappingConfig) -> str:
    if not cfg.events:
        raise ConfigError("events is required: make mapping EVENTS=<the export's events file> [ITEMS=<items file>]")
    out = Path(cfg.output)
    if out.exists() and not cfg.overwrite:
        raise ConfigError(f"output: {out} exists; name another file (MAPPING=...) or set overwrite=true")
    files = [p.strip() for p in cfg.events.split(",") if p.strip()]  # several: clicks.dat,buys.dat
    for name, path in [*(("events", p) for p in files), ("items", cfg.items)]:
        if path and "://" not in path and not Path(path).exists():
            raise ConfigError(f"{name}: {path} does not exist")
    events = [p if "://" in p else str(Path(p).resolve()) for p in files]
    items = cfg.items if not cfg.items or "://" in cfg.items else str(Path(cfg.items).resolve())
    text = to_yaml(suggest(events[0] if len(events) == 1 else events, items, cfg.encoding))
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args("Write a column mapping to start from, guessed from a shop's export", "suggest_mapping.yaml", argv)

    def body() -> int:
        cfg = load_job_config(SuggestMappingConfig, args)
        print(run(cfg), flush=True)
        print(f"wrote {cfg.output}: check the CHECK lines and the guesses, then make run MAPPING={cfg.output}", flush=True)
        return 0

    return run_job("suggest_mapping", body)


if __name__ == "__main__":
    sys.exit(main())
