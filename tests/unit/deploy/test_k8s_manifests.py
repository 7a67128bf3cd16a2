"""deploy/k8s: every manifest against the Kubernetes JSON schemas, and their wiring.

kubernetes-validate ships the upstream schemas (no network). The ServiceMonitor is a
CRD with no schema there: it is checked against schemas/servicemonitor.schema.json, a
hand-written subset of the Prometheus Operator CRD.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from .conftest import K8S

# The oldest Kubernetes the manifests must work on, and the newest the validator knows.
K8S_VERSIONS = ("1.29.0", f"{kubernetes_validate.latest_version()}.0")
SERVICEMONITOR_SCHEMA = Path(__file__).parent / "schemas" / "servicemonitor.schema.json"
NOT_RESOURCES = {"kustomization.yaml"}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name not in NOT_RESOURCES)


def _by_kind() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in _manifest_files():
        for doc in _docs(path):
            assert doc["kind"] not in found, f"two {doc['kind']} manifests"
            found[doc["kind"]] = doc
    return found


def _validate(doc: dict[str, Any], version: str) -> None:
    if doc["apiVersion"].startswith("monitoring.coreos.com/"):
        schema = json.loads(SERVICEMONITOR_SCHEMA.read_text(encoding="utf-8"))
        jsonschema.Draft202012Validator(schema).validate(doc)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_manifest_is_valid(path: Path, version: str) -> None:
    docs = _docs(path)
    assert docs, f"{path.name} is empty"
    for doc in docs:
        _validate(doc, version)


def test_validator_rejects_a_misspelt_field() -> None:
    """Strict mode is on: a typo is an error, not an ignored field."""
    sts = copy.deepcopy(_by_kind()["StatefulSet"])
    container = sts["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSIONS[-1], strict=True)
    sm = copy.deepcopy(_by_kind()["ServiceMonitor"])
    sm["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        _validate(sm, K8S_VERSIONS[-1])


def test_expected_resources_exist() -> None:
    kinds = set(_by_kind())
    assert {"StatefulSet", "Service", "ConfigMap", "Secret", "PodDisruptionBudget", "ServiceMonitor"} <= kinds


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    expected = {p.name for p in _manifest_files()} - {"secret.example.yaml"}
    assert set(kust["resources"]) == expected


def _pod(kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return kinds["StatefulSet"]["spec"]["template"]


def test_statefulset_wiring() -> None:
    kinds = _by_kind()
    sts, svc, cm = kinds["StatefulSet"], kinds["Service"], kinds["ConfigMap"]
    pod = _pod(kinds)
    pod_labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]

    # headless Service named in serviceName, selecting the pods
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    # the RocksDB data dir is on the claim template
    data_dir = cm["data"]["STREAMREC_WORKER__DATA_DIR"]
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[data_dir] in claims

    # probes on the worker's port
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_names["http"] == int(cm["data"]["STREAMREC_WORKER__WEB_PORT"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert cm["data"]["STREAMREC_WORKER__WEB_BIND"] == "0.0.0.0"

    # one core, about 1.5 GiB, Guaranteed QoS
    res = container["resources"]
    assert res["requests"] == res["limits"] == {"cpu": "1", "memory": "1536Mi"}
    assert cm["data"]["STREAMREC_WORKER__TORCH_THREADS"] == "1"
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 30

    # settings from the ConfigMap, the SASL password from a Secret
    assert container["envFrom"] == [{"configMapRef": {"name": cm["metadata"]["name"]}}]
    env = {e["name"]: e for e in container.get("env", [])}
    ref = env["STREAMREC_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    secret = kinds["Secret"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert "STREAMREC_KAFKA__SASL_PASSWORD" not in cm["data"]

    # non-root
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_servicemonitor_scrapes_the_service() -> None:
    kinds = _by_kind()
    sm, svc = kinds["ServiceMonitor"], kinds["Service"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    svc_ports = {p["name"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in svc_ports
        assert ep["path"] == "/metrics"
    # the alert rules select job="streamrec": the ServiceMonitor's default job label is the Service name
    assert "jobLabel" not in sm["spec"] and svc["metadata"]["name"] == "streamrec"
