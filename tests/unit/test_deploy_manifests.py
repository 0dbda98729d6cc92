"""Deployment files boot as written: cluster.yaml (Ray's own validator), the KubeRay manifests (the
CRDs' OpenAPI schemas, and Ray Serve's config schema for the app inside), the container build."""

from __future__ import annotations

import copy
import gzip
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "kuberay"


def _strict(schema: dict) -> dict:
    """The API server prunes unknown fields; kubectl apply --validate=strict refuses them. Closing
    every object that lists its properties makes a typo fail here the same way."""
    s = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(s)
    return s


def _validator(kind: str) -> jsonschema.Draft7Validator:
    schema = json.loads(gzip.decompress((FIXTURES / f"{kind}.v1.schema.json.gz").read_bytes()))
    return jsonschema.Draft7Validator(_strict(schema))


def _manifest(name: str) -> dict:
    return yaml.safe_load((ROOT / "deploy" / "kuberay" / name).read_text())


@pytest.mark.parametrize("name,kind", [("rayjob.yaml", "rayjob"), ("rayservice.yaml", "rayservice")])
def test_kuberay_manifests_match_the_crd_schemas(name, kind):
    manifest = _manifest(name)
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"].lower() == kind
    errors = sorted(_validator(kind).iter_errors(manifest), key=str)
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]
    broken = copy.deepcopy(manifest)
    broken["spec"]["not_a_field"] = 1
    assert any("not_a_field" in e.message for e in _validator(kind).iter_errors(broken))


def test_rayservice_is_serving_config_yaml_and_passes_serves_schema():
    from ray.serve.schema import ServeDeploySchema

    from serving.deploy import render_rayservice
    from serving.settings import ServingConfig

    text = (ROOT / "deploy" / "kuberay" / "rayservice.yaml").read_text()
    manifest = yaml.safe_load(text)
    make = (ROOT / "Makefile").read_text()
    args = dict(re.findall(r"--(artifacts|state|image) (\S+)", make.split("kuberay: venv", 1)[1].split("\n\n", 1)[0]))
    assert text == render_rayservice(args["artifacts"], args["state"], args["image"]), \
        "deploy/kuberay/rayservice.yaml is stale: run `make kuberay`"
    serve = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve)
    app = serve["applications"][0]
    cfg = ServingConfig.from_args(app["args"])
    assert cfg.artifacts_root.startswith("s3://") and app["runtime_env"]["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert serve["http_options"]["host"] == "0.0.0.0"


def test_rayjob_entrypoint_is_a_valid_pipeline_command():
    from features.config import load_config
    from jobs.pipeline import PipelineConfig
    from jobs.train_encoder import TrainEncoderConfig

    argv = shlex.split(_manifest("rayjob.yaml")["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "jobs.pipeline"]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = load_config(PipelineConfig, ROOT / "jobs/configs/pipeline.yaml", sets)
    assert cfg.output_root.startswith("s3://") and not cfg.deploy.enabled
    load_config(TrainEncoderConfig, ROOT / "jobs/configs/train_encoder.yaml", list(cfg.stage_args.train_encoder))


def test_serving_config_yaml_passes_serves_schema():
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "serving" / "config.yaml").read_text()))


def test_images_use_the_projects_python_and_pins():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == ">=3.11"
    pins = dict(re.match(r"([a-z0-9-]+)(?:\[[^]]*\])?==(\S+)", d).groups() for d in pyproject["project"]["dependencies"]
                if "==" in d)
    docker = (ROOT / "deploy" / "Dockerfile").read_text()
    assert f"rayproject/ray:{pins['ray']}-py311-cpu" in docker and f"torch=={pins['torch']}" in docker
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    images = [cluster["docker"]["image"], cluster["docker"]["worker_image"],
              *(t.get("docker", {}).get("worker_image") for t in cluster["available_node_types"].values())]
    assert all(i.startswith(f"rayproject/ray:{pins['ray']}-py311") for i in images if i), images
    assert any("pip install" in c and "-e ." in c for c in cluster["setup_commands"])
    assert ".gitignore" in cluster["rsync_filter"] and ".venv" in cluster["rsync_exclude"]
    assert all(d in (ROOT / ".dockerignore").read_text().split() for d in (".venv", "artifacts", "state"))


def test_config_keys_named_in_deployment_comments_exist():
    """cluster.yaml and the manifests name overrides (train.use_gpu, ...); each must be a real key."""
    from features.config import load_config
    from jobs.train_encoder import TrainEncoderConfig

    text = (ROOT / "cluster.yaml").read_text()
    for keys in re.findall(r"stage_args\.train_encoder=\[([^\]]+)\]", text):
        load_config(TrainEncoderConfig, None, keys.split(","))
    assert "ray.use_gpu" not in text


def test_a_deploy_after_a_newer_artifact_version_changes_the_apps_config(tmp_path):
    """Serve rebuilds an app only when its config changes, and the config says "latest": the
    rendered args carry the newest versions, so `make serve` after a job wrote one loads it, and a
    second deploy of the same artifacts restarts nothing."""
    from serving.deploy import render
    from serving.settings import ServingConfig

    def version(kind: str, name: str) -> None:
        (tmp_path / "artifacts" / kind / name).mkdir(parents=True)
        (tmp_path / "artifacts" / kind / name / "manifest.json").write_text("{}")

    def args() -> dict:
        path, _ = render(str(tmp_path / "artifacts"), str(tmp_path / "state"), [], tmp_path / "serve.yaml", cpus=2)
        return yaml.safe_load(path.read_text())["applications"][0]["args"]

    version("features", "20240101T000000Z-aaaa")
    version("index", "20240101T000100Z-bbbb")
    first = args()
    assert first == args()
    (tmp_path / "artifacts" / "index" / "20240102T000000Z-cccc").mkdir()  # not complete: no manifest yet
    assert args() == first
    version("index", "20240102T000100Z-dddd")
    newer = args()
    assert newer["revision"] != first["revision"] and "index=20240102T000100Z-dddd" in newer["revision"]
    from features.artifacts import git_commit

    assert f"code={git_commit()[:12]}" in newer["revision"]  # an upgrade of the code is loaded too
    assert ServingConfig.from_args(newer).revision == newer["revision"]
