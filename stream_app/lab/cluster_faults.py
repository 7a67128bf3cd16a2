"""Faults of the Kafka cluster itself, for ``streamrec chaos --broker kafka``: three nodes, RF 3, min ISR 2.

Each procedure has the signature of the worker faults in ``stream_app.lab.chaos``
(env, traffic, profile, detail) -> fault-end times, and runs on a FaultEnv
whose broker is a local three-node ``KafkaCluster``:

* one broker SIGKILLed under traffic (the one leading most clicks partitions,
  so leadership must move), restarted after ``freeze_s``;
* the broker leading the clicks partitions frozen (SIGSTOP for ``freeze_s``) and resumed;
* the active KRaft controller SIGKILLed, restarted after ``freeze_s``.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Callable

from stream_app.lab.fault_env import hold_frozen, under_traffic

CLUSTER_FAULTS = ("kafka: broker killed", "kafka: clicks leader frozen", "kafka: controller killed")
CLUSTER_NODES = 3


def clicks_leader(env: Any) -> int:
    """The node id leading most partitions of the clicks topic."""
    from stream_app.worker.topics import admin_client

    admin = admin_client(env.settings)
    try:
        desc = admin.describe_topics([env.settings.topics.clicks])
    finally:
        admin.close()
    leaders = Counter(p.get("leader_id", p.get("leader", -1)) for d in desc for p in d.get("partitions", []))
    leaders.pop(-1, None)
    if not leaders:
        raise RuntimeError("the clicks topic has no partition leader")
    return int(leaders.most_common(1)[0][0])


def _needs_cluster(env: Any) -> Any:
    cluster = env.broker
    if cluster is None or not hasattr(cluster, "nodes") or len(cluster.nodes) < CLUSTER_NODES:
        raise RuntimeError(f"this fault needs a local {CLUSTER_NODES}-node Kafka cluster (--broker kafka)")
    return cluster


def _kill_and_restart(cluster: Any, victim: int, down_s: float, detail: dict[str, Any]) -> float:
    """SIGKILL node ``victim``, leave it down ``down_s``, restart it; returns the time of the kill."""
    end = time.time()
    cluster.kill(victim)
    time.sleep(down_s)
    started = time.monotonic()
    cluster.restart(victim)
    detail["node_restart_s"] = round(time.monotonic() - started, 2)
    return end


def _node_killed(env: Any, traffic: Any, p: Any, detail: dict[str, Any]) -> list[float]:
    cluster = _needs_cluster(env)
    w = under_traffic(env, traffic, p.gap_s)
    victim = clicks_leader(env)
    detail["killed_node"] = victim
    end = _kill_and_restart(cluster, victim, p.freeze_s, detail)
    w.wait_ready()
    return [end]


def _leader_frozen(env: Any, traffic: Any, p: Any, detail: dict[str, Any]) -> list[float]:
    cluster = _needs_cluster(env)
    w = under_traffic(env, traffic, p.gap_s)
    victim = clicks_leader(env)
    detail["frozen_node"] = victim
    hold_frozen(lambda: cluster.freeze(victim), lambda: cluster.thaw(victim), p.freeze_s)
    detail["frozen_s"] = p.freeze_s
    end = time.time()
    w.wait_ready()
    return [end]


def _controller_killed(env: Any, traffic: Any, p: Any, detail: dict[str, Any]) -> list[float]:
    cluster = _needs_cluster(env)
    w = under_traffic(env, traffic, p.gap_s)
    victim = cluster.controller_id()
    if victim is None:
        raise RuntimeError("no active KRaft controller found in the quorum state")
    detail["killed_controller"] = victim
    end = _kill_and_restart(cluster, victim, p.freeze_s, detail)
    detail["new_controller"] = cluster.controller_id()
    w.wait_ready()
    return [end]


CLUSTER_PROCEDURES: dict[str, tuple[Callable[..., list[float]], int]] = {
    CLUSTER_FAULTS[0]: (_node_killed, 0),
    CLUSTER_FAULTS[1]: (_leader_frozen, 0),
    CLUSTER_FAULTS[2]: (_controller_killed, 0),
}
