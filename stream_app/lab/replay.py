"""Replays a GRU4Rec-format click log (SessionId, ItemId, Time) to the clicks topic, each session as one user;
publishes a catalogue to the items topic."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import orjson

from stream_app.core.records import Click
from stream_app.errors import DatasetError
from stream_app.settings import Settings
from stream_app.worker.topics import client_kwargs


@dataclass(frozen=True, slots=True)
class LoggedClick:
    session: str
    item: str
    ts: float


def read_log(path: Path, limit: int | None = None, time_order: bool = True) -> list[LoggedClick]:
    """The clicks of a GRU4Rec TSV, in global time order (a live stream interleaves sessions)."""
    out: list[LoggedClick] = []
    with open(path, newline="") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["SessionId", "ItemId", "Time"]:
            raise ValueError(f"{path}: expected a header 'SessionId<TAB>ItemId<TAB>Time', got {header}")
        for row in reader:
            out.append(LoggedClick(row[0], row[1], float(row[2])))
    if time_order:
        # stable: clicks of one session keep their order when times tie
        out.sort(key=lambda c: c.ts)
    return out[:limit] if limit else out


def click_messages(clicks: list[LoggedClick], user_prefix: str = "u") -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs as the worker expects them: keyed by user id."""
    for c in clicks:
        user = f"{user_prefix}{c.session}"
        yield user.encode(), Click(user_id=user, item_id=c.item, ts=c.ts).to_json()


def producer(settings: Settings, **overrides: Any) -> Any:
    """A kafka-python producer for the configured brokers (acks=all, batched)."""
    from kafka import KafkaProducer

    kwargs = dict(client_kwargs(settings), acks="all", linger_ms=5, retries=5)
    kwargs.update(overrides)
    return KafkaProducer(**kwargs)


def replay(
    settings: Settings,
    messages: Iterator[tuple[bytes, bytes]],
    rate: float = 0.0,
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """Send every message (at ``rate`` per second if > 0); returns the count after a flush."""
    prod = producer(settings)
    topic = settings.topics.clicks
    start = time.perf_counter()
    n = 0
    try:
        for key, value in messages:
            prod.send(topic, key=key, value=value)
            n += 1
            if rate > 0:
                ahead = n / rate - (time.perf_counter() - start)
                if ahead > 0:
                    time.sleep(ahead)
            if on_sent is not None and n % 500 == 0:
                on_sent(n)
        prod.flush()
    finally:
        prod.close()
    if on_sent is not None:
        on_sent(n)
    return n


def catalogue_messages(path: Path, id_field: str = "item_id") -> Iterator[tuple[bytes, bytes | None]]:
    """(key, value) records for the ``items`` topic from a file: an S3-Rec ``NAME_item2attributes.json`` (item ->
    attribute ids; every item available) or JSON Lines of ``{"item_id", "attributes"?, "available"?}`` objects,
    where ``{"item_id": ..., "deleted": true}`` is a tombstone. Values are sent as written; the worker validates.
    With ``id_field="user_id"``, records for the ``users`` topic: ``user2attributes.json`` or JSON Lines of
    ``{"user_id", "attributes"}``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read the catalogue file {path}: {exc}") from None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        for item, attrs in whole.items():
            yield str(item).encode(), orjson.dumps({"attributes": attrs, **({"available": True} if id_field == "item_id" else {})})
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            body = json.loads(line)
            item = str(body[id_field])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}:{n}: not a {id_field.split('_')[0]} record line ({exc!r:.80}); expected "
                               f'{{"{id_field}": ..., "attributes": [...]}}') from None
        yield item.encode(), None if body.get("deleted") is True else line.strip().encode()


def publish_catalogue(settings: Settings, messages: Iterable[tuple[bytes, bytes | None]], topic: str | None = None) -> int:
    """Send catalogue records to the items topic (or ``topic``: profiles to the users topic) and flush;
    returns the count."""
    prod = producer(settings)
    n = 0
    try:
        for key, value in messages:
            prod.send(topic or settings.topics.items, key=key, value=value)
            n += 1
        prod.flush()
    finally:
        prod.close()
    return n

