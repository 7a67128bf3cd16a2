"""deploy/compose.yaml, deploy/Dockerfile and their wiring.

No Docker engine runs in CI, and `docker compose` (the v2 plugin) may be absent:
the file is loaded with PyYAML and its structure checked here; when the plugin is
installed, `docker compose config` validates it against the Compose spec too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import COMPOSE, DEPLOY, PROMETHEUS_CONFIG, REPO

SERVICES = {"kafka", "kafka-init", "trainer", "worker", "replay", "prometheus", "kafka-exporter", "grafana"}


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def _script(service: dict[str, Any]) -> str:
    cmd = service.get("command", "")
    return "\n".join(cmd) if isinstance(cmd, list) else str(cmd)


def test_services_present() -> None:
    assert SERVICES <= set(_compose()["services"])


def test_kafka_runs_kraft_from_the_official_image() -> None:
    kafka = _compose()["services"]["kafka"]
    assert "apache/kafka:" in kafka["image"]
    env = _env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert not any("ZOOKEEPER" in k for k in env)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka["healthcheck"]["test"]


def test_topic_creation() -> None:
    services = _compose()["services"]
    init = services["kafka-init"]
    script = _script(init)
    worker_env = _env(services["worker"])
    for topic in ("STREAMREC_TOPICS__CLICKS", "STREAMREC_TOPICS__RECOMMENDATIONS", "STREAMREC_TOPICS__DEAD_LETTER"):
        assert f"--topic {worker_env[topic]} " in script, topic
    assert re.search(r"--topic recommendations [^\n]*\\\n\s*--config cleanup.policy=compact", script)
    assert "--if-not-exists" in script
    # partitions come from one variable, shared with the worker's setting
    assert "${STREAMREC_TOPICS__PARTITIONS:-4}" in script
    assert worker_env["STREAMREC_TOPICS__PARTITIONS"] == "${STREAMREC_TOPICS__PARTITIONS:-4}"
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert init["restart"] == "no"


def test_worker() -> None:
    services = _compose()["services"]
    worker = services["worker"]
    build = worker["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    env = _env(worker)
    assert env["STREAMREC_KAFKA__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["STREAMREC_WORKER__WEB_BIND"] == "0.0.0.0" and env["STREAMREC_WORKER__WEB_HOST"] == "worker"
    volumes = worker["volumes"]
    assert f"streamrec-data:{env['STREAMREC_WORKER__DATA_DIR']}" in volumes
    assert any(v.endswith(":/models:ro") for v in volumes)
    assert env["STREAMREC_MODEL__PATH"].startswith("/models/")
    assert worker["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    assert "/readyz" in " ".join(worker["healthcheck"]["test"])
    assert worker["command"] == ["worker"]


def test_trainer_and_replay() -> None:
    services = _compose()["services"]
    trainer, replay = services["trainer"], services["replay"]
    assert "streamrec train " in _script(trainer) and "--out /models/model.pt" in _script(trainer)
    assert replay["command"][0] == "replay"
    assert replay["depends_on"]["worker"]["condition"] == "service_healthy"
    # all three streamrec containers share one image and one set of settings
    assert trainer["image"] == replay["image"] == services["worker"]["image"]
    assert _env(trainer) == _env(replay) == _env(services["worker"])


def test_monitoring_services() -> None:
    compose = _compose()
    services = compose["services"]
    assert services["kafka-exporter"]["image"].startswith("danielqsj/kafka-exporter:")
    assert "--kafka.server=kafka:9092" in services["kafka-exporter"]["command"]
    prom = services["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    # Prometheus scrapes the worker service on the worker's web port, and kafka-exporter
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    (sd,) = jobs["streamrec"]["dns_sd_configs"]
    assert sd["names"] == ["worker"]
    assert sd["port"] == int(_env(services["worker"])["STREAMREC_WORKER__WEB_PORT"])
    assert jobs["kafka-exporter"]["static_configs"][0]["targets"] == ["kafka-exporter:9308"]
    assert config["rule_files"] == ["rules.yml"]


def test_references_resolve() -> None:
    compose = _compose()
    services = compose["services"]
    declared_volumes = set(compose.get("volumes", {}))
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for vol in svc.get("volumes", []):
            vol = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", vol)  # the default of ${VAR:-default}
            source = vol.split(":", 1)[0]
            if source.startswith((".", "/")):
                if "var/" in source:
                    continue  # user data (datasets, models): made by the operator
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in declared_volumes, f"{name}: volume {source} not declared"


def test_dockerfile() -> None:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert "https://download.pytorch.org/whl/cpu" in text
    assert re.search(r"^USER (?!root)\S+", text, re.M), "runs as a non-root user"
    assert re.search(r"^VOLUME \[\"/var/lib/streamrec\"\]", text, re.M)
    # the torch pinned in the image is the one pinned in pyproject.toml
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    pins = [d for d in pyproject["project"]["dependencies"] if re.match(r"torch\s*==", d)]
    assert pins, "pyproject.toml pins torch exactly"
    pinned = pins[0].split("==", 1)[1].strip()
    assert f"ARG TORCH_VERSION={pinned}\n" in text
    targets = re.findall(r"^FROM \S+ AS (\S+)", text, re.M)
    compose_target = _compose()["services"]["worker"]["build"]["target"]
    assert compose_target in targets and "with-model" in targets


def test_install_ci_deps_script_parses() -> None:
    script = DEPLOY / "install-ci-deps.sh"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _compose_v2() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


def test_docker_compose_config() -> None:
    cmd = _compose_v2()
    if cmd is None:
        pytest.skip("the docker compose v2 plugin is not installed; the structure tests above stand in for it")
    proc = subprocess.run([*cmd, "-f", str(COMPOSE), "config", "--quiet"], cwd=COMPOSE.parent,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
