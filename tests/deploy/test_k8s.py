"""deploy/k8s: workers and reclaimers for an existing NATS cluster, checked against the real CLI; every
pod connects with a credential of its role, a worker with the one of its own identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from coord.naming import Names
from coord.roles import inbox_prefix
from tests.deploy import ROOT, cli_envvars, parse_corral

K8S = ROOT / "deploy" / "k8s"
KIND = {"corral-worker": "StatefulSet", "corral-reclaimer": "Deployment"}


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    (doc,) = load(K8S / "kustomization.yaml")
    return doc


@pytest.fixture(scope="module")
def objects(kustomization: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object, for every manifest the kustomization applies."""
    out = {}
    for resource in kustomization["resources"]:
        for doc in load(K8S / resource):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def pod_spec(objects: dict[tuple[str, str], dict[str, Any]], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = objects[(KIND[name], name)]["spec"]["template"]["spec"]
    return spec


def test_kustomization_applies_parseable_manifests_and_sets_the_corral_image(
    kustomization: dict[str, Any], objects: dict[tuple[str, str], dict[str, Any]]
) -> None:
    assert set(objects) == {
        ("ConfigMap", "corral"),
        ("StatefulSet", "corral-worker"),
        ("Deployment", "corral-reclaimer"),
        ("PodDisruptionBudget", "corral-reclaimer"),
    }
    for doc in objects.values():
        assert doc["apiVersion"] and doc["metadata"]["name"]
    assert "secret-example.yaml" not in kustomization["resources"]  # credentials are the operator's
    (example,) = load(K8S / "secret-example.yaml")
    assert example["kind"] == "Secret" and example["metadata"]["name"] == "corral-creds"
    image_names = {image["name"] for image in kustomization["images"]}
    for name in ("corral-worker", "corral-reclaimer"):
        for container in pod_spec(objects, name)["containers"]:
            assert container["image"] in image_names


def test_deployments_select_their_own_pods(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    for (kind, _), doc in objects.items():
        if kind in ("Deployment", "StatefulSet"):
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()
    pdb = objects[("PodDisruptionBudget", "corral-reclaimer")]
    reclaimer = objects[("Deployment", "corral-reclaimer")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= reclaimer["spec"]["template"]["metadata"]["labels"].items()
    assert reclaimer["spec"]["replicas"] > pdb["spec"]["minAvailable"]


def test_pods_run_real_corral_command_lines(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    (worker,) = pod_spec(objects, "corral-worker")["containers"]
    (reclaimer,) = pod_spec(objects, "corral-reclaimer")["containers"]
    assert parse_corral(worker["args"]) == (["worker"], [])
    assert "--queue" in worker["args"]
    assert worker["args"][worker["args"].index("--id") + 1] == "$(POD_NAME)"  # its identity is its pod
    assert parse_corral(reclaimer["args"]) == (["reclaimer"], [])


def test_settings_come_from_the_configmap_and_each_pod_connects_with_its_roles_credential(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    config = objects[("ConfigMap", "corral")]["data"]
    known = cli_envvars()
    unknown = sorted(k for k in config if k.startswith("CORRAL_") and k not in known)
    assert not unknown, f"the ConfigMap sets {unknown}, which no corral option reads"
    url = urlsplit(config["CORRAL_URL"])
    assert url.scheme == "nats" and url.hostname not in ("localhost", "127.0.0.1")
    assert config["CORRAL_REPLICAS"] == "3"
    assert not any(word in key for key in config for word in ("PASSWORD", "TOKEN"))
    for name in ("corral-worker", "corral-reclaimer"):
        spec = pod_spec(objects, name)
        (container,) = spec["containers"]
        assert container["envFrom"] == [{"configMapRef": {"name": "corral"}}]
        env = {e["name"]: e for e in container["env"]}
        identity = "$(POD_NAME)" if name == "corral-worker" else name
        assert env["CORRAL_NKEY"]["value"] == f"/etc/corral/creds/{identity}.nk"
        namespace = config["CORRAL_NAMESPACE"]
        assert env["CORRAL_INBOX_PREFIX"]["value"] == inbox_prefix(Names(namespace), "x")[:-1] + identity
        names = [e["name"] for e in container["env"]]
        assert names.index("POD_NAME") < names.index("CORRAL_NKEY")  # $(POD_NAME) expands only if defined before
        assert env["OTEL_SERVICE_NAME"]["value"] == name
        assert "$(POD_NAME)" in env["OTEL_RESOURCE_ATTRIBUTES"]["value"]
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["nats-files"]["secret"]["optional"] is True
        assert volumes["creds"]["secret"]["secretName"] == "corral-creds"
        assert "optional" not in volumes["creds"]["secret"]  # no credential, no pod
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert set(mounts) == set(volumes)


def test_pods_are_unprivileged_and_workers_get_time_to_drain(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    for name in ("corral-worker", "corral-reclaimer"):
        spec = pod_spec(objects, name)
        assert spec["securityContext"]["runAsNonRoot"] is True
        (container,) = spec["containers"]
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        if security.get("readOnlyRootFilesystem"):
            tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
            assert next(v for v in spec["volumes"] if v["name"] == tmp["name"])["emptyDir"] == {}
        assert "memory" in container["resources"]["limits"]
    worker = pod_spec(objects, "corral-worker")
    args = worker["containers"][0]["args"]
    assert worker["terminationGracePeriodSeconds"] > float(args[args.index("--grace") + 1])
