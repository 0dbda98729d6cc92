"""The ONLY place the deployments are bound together.

    serve deploy serving/config.yaml     # `make serve`: a running cluster (ray start --head)
    serve run serving/config.yaml        # foreground, for development

`build_app(args)` is the application builder that serving/config.yaml names; `args` is the
ServingConfig as a mapping (unknown keys and wrong types are refused, with the key named).
`load_serve_config` + `build_app_with_options(args, deployment_options)` give tests and benchmarks the same
application, with the same per-deployment options, through `serve.run` in-process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ray.serve import Application

from features.config import ConfigError, apply_overrides
from serving.encoder import QueryEncoder
from serving.ingress import Ingress
from serving.profiles import Profiles
from serving.retriever import Retriever
from serving.settings import ServingConfig, resolve
from serving.telemetry import Telemetry

DEPLOYMENTS = (QueryEncoder, Retriever, Profiles, Telemetry, Ingress)
CONFIG = Path(__file__).resolve().parent / "config.yaml"


def build_app(args: dict[str, Any]) -> Application:
    """The application builder `serve deploy` calls (Serve passes exactly one argument)."""
    return build_app_with_options(args, None)


def build_app_with_options(args: dict[str, Any] | None, deployment_options: dict[str, dict] | None) -> Application:
    """build_app, with per-deployment options (a serve config's `deployments` list, by name)."""
    cfg = ServingConfig.from_args(args)
    res = resolve(cfg)  # once, so every replica loads the same versions
    opts = deployment_options or {}
    unknown = sorted(set(opts) - {d.name for d in DEPLOYMENTS})
    if unknown:
        raise ConfigError(f"deployments: unknown name(s) {unknown}; allowed: {', '.join(d.name for d in DEPLOYMENTS)}")

    def dep(d: Any) -> Any:
        return d.options(**opts[d.name]) if d.name in opts else d

    encoder = dep(QueryEncoder).bind(cfg, res)
    retriever = dep(Retriever).bind(cfg, res)
    profiles = dep(Profiles).bind(cfg, res)
    telemetry = dep(Telemetry).bind(cfg, res)
    return dep(Ingress).bind(cfg, res, encoder, retriever, profiles, telemetry)


def load_serve_config(path: str | Path = CONFIG, overrides: list[str] | None = None) -> dict[str, Any]:
    """The first application of a `serve deploy` config: name, route_prefix, args (with `a.b=v`
    overrides applied), per-deployment options, and http_options."""
    conf = yaml.safe_load(Path(path).read_text())
    app = conf["applications"][0]
    options = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app.get("deployments", [])}
    return {"name": app.get("name", "intently"), "route_prefix": app.get("route_prefix", "/"),
            "args": apply_overrides(app.get("args") or {}, overrides or []), "deployment_options": options,
            "http_options": conf.get("http_options", {})}
