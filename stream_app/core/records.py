"""Wire schemas: what travels on the topics. No decisions here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import orjson

DEAD_LETTER_REASON_HEADER = "streamrec-reason"
DEAD_LETTER_DETAIL_HEADER = "streamrec-detail"
DEAD_LETTER_SOURCE_HEADER = "streamrec-source"


@dataclass(frozen=True, slots=True)
class Click:
    """One click, as validated: ``{"user_id": str, "item_id": str|int, "ts": seconds, "event_type"?: str}``."""

    user_id: str
    item_id: str
    ts: float
    event_type: str | None = None

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"user_id": self.user_id, "item_id": self.item_id, "ts": self.ts}
        if self.event_type is not None:
            body["event_type"] = self.event_type
        return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Source:
    """Where the click that caused a list was read from, and when it entered Kafka."""

    topic: str
    partition: int
    offset: int
    timestamp: float = 0.0


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A user's refreshed top-k list, keyed by user id (a compacted topic keeps the latest)."""

    user_id: str
    items: tuple[str, ...]
    scores: tuple[float, ...]
    model_version: str
    strategy: str  # "model" (from the user's hidden state) or "popularity" (cold start / fallback)
    source: Source
    click_ts: float
    produced_ts: float
    replayed: bool = False
    stages: tuple[str, ...] = ()  # what made the list: score (or popularity), then cap, mmr, calibration, long_tail
    also: tuple[str, ...] = ()  # the sampled "you may also like" list (stream_app/core/explore.py), when on
    also_p: tuple[float, ...] = ()  # each one's single-draw probability under the sampling softmax
    policy_id: str = ""  # the serving policy: a hash of every setting that shapes lists (stream_app/core/recommender.py)
    sources: tuple[str, ...] = ()  # with the recall stage on: per item, the candidate sources it came from

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "items": list(self.items),
            "scores": [round(s, 6) for s in self.scores],
            "model_version": self.model_version,
            "strategy": self.strategy,
            "source": {
                "topic": self.source.topic,
                "partition": self.source.partition,
                "offset": self.source.offset,
                "timestamp": self.source.timestamp,
            },
            "click_ts": self.click_ts,
            "produced_ts": self.produced_ts,
            "replayed": self.replayed,
            "stages": list(self.stages),
            # what off-policy learning needs: who served the list, and that its items were shown for sure
            **({"policy": {"id": self.policy_id, "version": self.model_version, "shown": "deterministic"}}
               if self.policy_id else {}),
            **({"sources": list(self.sources)} if self.sources else {}),
            **({"also_like": {"items": list(self.also), "p": [round(p, 8) for p in self.also_p]}} if self.also else {}),
        }

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON (orjson: 1.6 against 21 µs for ``json.dumps`` on a list of 20, ``python -m timeit``
        2026-12-02; non-ASCII is not escaped)."""
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_json(cls, raw: bytes) -> "Recommendation":
        d = json.loads(raw)
        src = d["source"]
        return cls(
            user_id=d["user_id"],
            items=tuple(d["items"]),
            scores=tuple(d["scores"]),
            model_version=d["model_version"],
            strategy=d["strategy"],
            source=Source(src["topic"], int(src["partition"]), int(src["offset"]), float(src.get("timestamp", 0.0))),
            click_ts=float(d["click_ts"]),
            produced_ts=float(d["produced_ts"]),
            replayed=bool(d.get("replayed", False)),
            stages=tuple(d.get("stages", ())),
            also=tuple((d.get("also_like") or {}).get("items", ())),
            also_p=tuple((d.get("also_like") or {}).get("p", ())),
            policy_id=str((d.get("policy") or {}).get("id", "")),
            sources=tuple(d.get("sources", ())),
        )
