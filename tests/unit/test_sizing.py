"""Serving sized to the node's CPUs: the 2-CPU reference is the file as written; bigger nodes scale."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serving import sizing
from serving.settings import ServingConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def conf() -> dict:
    return yaml.safe_load((ROOT / "serving" / "config.yaml").read_text())


def _deps(c: dict) -> dict:
    return {d["name"]: d for d in c["applications"][0]["deployments"]}


def test_reference_node_keeps_the_file_as_written(conf):
    for cpus in (1, 2):
        sized, chosen = sizing.size(conf, cpus)
        assert sized == conf and chosen["cpus"] == cpus and "reference" in chosen["profile"]


def test_a_16_cpu_node_gets_more_replicas_and_limits_and_still_passes_serves_schema(conf):
    from ray.serve.schema import ServeDeploySchema

    sized, chosen = sizing.size(conf, 16)
    d = _deps(sized)
    # queries are encoded in the Ingress (encoder.placement: ingress): it is the heavy replica
    assert d["Ingress"]["autoscaling_config"]["max_replicas"] == 8
    assert d["Ingress"]["ray_actor_options"]["num_cpus"] == 1.0
    # reads are retrieved in the Ingress (retriever_placement: ingress): the Retriever only logs upserts
    assert d["Retriever"]["autoscaling_config"]["max_replicas"] == 2
    assert d["QueryEncoder"]["autoscaling_config"]["max_replicas"] == 2  # item upserts only
    for name in ("Telemetry", "Profiles"):  # single replicas by design
        assert d[name]["autoscaling_config"]["max_replicas"] == 1
    args = sized["applications"][0]["args"]
    assert args["overload"] == {"max_in_flight": 256, "write_reserve": 128}
    # the Ingress scales out before it sheds, and may hold what it admits
    assert d["Ingress"]["autoscaling_config"]["target_ongoing_requests"] < args["overload"]["max_in_flight"]
    assert d["Ingress"]["max_ongoing_requests"] >= args["overload"]["max_in_flight"] + args["overload"]["write_reserve"]
    assert chosen["haproxy_threads"] == 4 and chosen["max_in_flight"] == 256
    ServeDeploySchema.model_validate(sized)
    ServingConfig.from_args(args)  # the args are still a valid serving config
    assert _deps(conf)["QueryEncoder"]["ray_actor_options"]["num_cpus"] == 0.5  # the input is not modified


def test_cpus_are_validated_and_auto_reads_the_host():
    assert sizing.parse_cpus("auto") == sizing.host_cpus() >= 1
    assert sizing.parse_cpus("4") == 4
    for bad in ("0", "-2", "many", 0):
        with pytest.raises(ValueError, match="cpus=.*allowed: auto or a positive integer"):
            sizing.parse_cpus(bad)
    assert [sizing.haproxy_threads(c) for c in (1, 2, 8, 16, 64)] == [1, 1, 2, 4, 4]


def test_with_the_encoder_as_a_deployment_it_is_the_one_scaled(conf):
    import copy

    c = copy.deepcopy(conf)
    c["applications"][0]["args"]["encoder"]["placement"] = "deployment"
    d = _deps(sizing.size(c, 16)[0])
    assert d["QueryEncoder"]["autoscaling_config"]["max_replicas"] == 8
    assert d["QueryEncoder"]["ray_actor_options"]["num_cpus"] == 1.0
    assert d["Ingress"]["autoscaling_config"]["max_replicas"] == 4


def test_with_reads_in_the_retriever_it_is_scaled_too(conf):
    import copy

    c = copy.deepcopy(conf)
    c["applications"][0]["args"]["retriever_placement"] = "deployment"
    d = _deps(sizing.size(c, 16)[0])
    assert d["Retriever"]["autoscaling_config"]["max_replicas"] == 4
    assert d["Ingress"]["autoscaling_config"]["max_replicas"] == 8


def test_make_serve_sizes_to_the_cluster_not_the_machine(monkeypatch, capsys):
    """A 2-CPU local cluster on a bigger machine cannot place replicas sized for the machine."""
    from types import SimpleNamespace

    import ray.util.state

    from serving.deploy import cluster_cpus

    nodes = [SimpleNamespace(state="ALIVE", resources_total={"CPU": 2.0, "memory": 1e9}),
             SimpleNamespace(state="ALIVE", resources_total={"CPU": 4.0}),
             SimpleNamespace(state="DEAD", resources_total={"CPU": 16.0})]
    monkeypatch.setattr(ray.util.state, "list_nodes", lambda **kw: nodes)
    assert cluster_cpus("http://head:8265") == 6

    def down(**kw):
        raise ConnectionError("Failed to connect to API server. Please check the API server log")

    monkeypatch.setattr(ray.util.state, "list_nodes", down)
    assert cluster_cpus("http://head:8265") is None
    assert "could not read the cluster's CPUs from http://head:8265 (ConnectionError: Failed to connect to API " \
           "server); using this machine's" in capsys.readouterr().out
