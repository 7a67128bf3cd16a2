"""The STREAMREC_ variables set by the deploy files are settings the worker reads."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import yaml

from .conftest import COMPOSE, DEPLOY, K8S

# The names agreed for the deploy files (docs/operations.md#settings documents them all).
AGREED = frozenset({
    "STREAMREC_TOPICS__ITEMS", "STREAMREC_TOPICS__ITEMS_DEAD_LETTER",
    "STREAMREC_TOPICS__USERS", "STREAMREC_TOPICS__USERS_DEAD_LETTER", "STREAMREC_TOPICS__USER_VECTORS",
    "STREAMREC_KAFKA__BOOTSTRAP_SERVERS", "STREAMREC_KAFKA__SECURITY_PROTOCOL", "STREAMREC_KAFKA__SASL_MECHANISM",
    "STREAMREC_KAFKA__SASL_USERNAME", "STREAMREC_KAFKA__SASL_PASSWORD", "STREAMREC_KAFKA__SSL_CAFILE",
    "STREAMREC_TOPICS__CLICKS", "STREAMREC_TOPICS__RECOMMENDATIONS", "STREAMREC_TOPICS__DEAD_LETTER",
    "STREAMREC_TOPICS__PARTITIONS", "STREAMREC_TOPICS__REPLICATION_FACTOR",
    "STREAMREC_MODEL__PATH", "STREAMREC_MODEL__K", "STREAMREC_MODEL__EXCLUDE_CLICKED",
    "STREAMREC_SESSION__GAP_S", "STREAMREC_SESSION__KEEP_ACROSS_SESSIONS", "STREAMREC_SESSION__STATE_TTL_S",
    "STREAMREC_WORKER__APP_ID", "STREAMREC_WORKER__DATA_DIR", "STREAMREC_WORKER__WEB_HOST", "STREAMREC_WORKER__WEB_BIND",
    "STREAMREC_WORKER__WEB_PORT", "STREAMREC_WORKER__STANDBY_REPLICAS", "STREAMREC_WORKER__BATCH_MAX",
    "STREAMREC_WORKER__BATCH_MS", "STREAMREC_WORKER__TORCH_THREADS", "STREAMREC_WORKER__ROCKSDB_BLOCK_CACHE_BYTES",
    "STREAMREC_WORKER__MAX_EVENT_BYTES", "STREAMREC_WORKER__API_TOKEN",
})


def _compose_env() -> dict[str, str]:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    env: dict[str, str] = {}
    for svc in compose["services"].values():
        for k, v in (svc.get("environment") or {}).items():
            if k.startswith("STREAMREC_"):
                env[k] = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(v))
    return env


def _k8s_env() -> dict[str, str]:
    cm = yaml.safe_load((K8S / "configmap.yaml").read_text(encoding="utf-8"))
    env = dict(cm["data"])
    sts = yaml.safe_load((K8S / "statefulset.yaml").read_text(encoding="utf-8"))
    for c in sts["spec"]["template"]["spec"]["containers"]:
        for e in c.get("env", []):
            if e["name"].startswith("STREAMREC_"):  # POD_NAME and the like only feed $(...) references
                env[e["name"]] = e.get("value", "from-a-secret")
    return env


def _dockerfile_env() -> dict[str, str]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    return dict(re.findall(r"\b(STREAMREC_\w+)=(\S+)", text))


@pytest.mark.parametrize("source", [_compose_env, _k8s_env, _dockerfile_env], ids=["compose", "k8s", "dockerfile"])
def test_only_agreed_names(source: Any) -> None:
    env = source()
    assert env
    assert set(env) - AGREED == set()


def _settings_class() -> Any:
    try:
        from stream_app.settings import Settings
    except Exception as exc:  # the worker package is written in parallel
        pytest.skip(f"stream_app.settings not importable yet: {exc!r}")
    return Settings


@pytest.mark.parametrize("source", [_compose_env, _k8s_env, _dockerfile_env], ids=["compose", "k8s", "dockerfile"])
def test_values_load_into_settings(source: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each variable names a settings field, and the values pass its validation."""
    settings_cls = _settings_class()
    for key in list(os.environ):
        if key.startswith("STREAMREC_"):
            monkeypatch.delenv(key)
    env = source()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = settings_cls()
    for k, v in env.items():
        group, name = k.removeprefix("STREAMREC_").lower().split("__", 1)
        section = getattr(settings, group)
        assert name in type(section).model_fields, f"{k}: no such setting"
