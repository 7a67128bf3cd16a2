#!/usr/bin/env python3
"""Count, independently of streamrec's own clients, whether every click got a list or a dead letter.

Uses confluent-kafka (librdkafka) only, not streamrec's code or its kafka-python and
aiokafka clients, so a fault injected by hand (a worker killed, its data dir deleted,
the broker stopped) can be checked with a different client than the one that wrote:

    python deploy/check_lists.py --bootstrap 127.0.0.1:9092 \\
        --clicks clicks --recommendations recommendations --dead-letter clicks-dlq

It reads the three topics from the start to their ends (assigned partitions, nothing
committed) and prints one JSON object: clicks, lists, dead letters (by reason),
duplicated lists, and ``missing``: clicks with neither a list nor a dead letter, which
must be 0. Exit status 1 when something is missing. SASL/SSL: pass librdkafka settings
with ``--config key=value`` (e.g. ``security.protocol=SASL_SSL``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any, Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

SOURCE_HEADER = "streamrec-source"  # "topic/partition/offset" of the click a dead letter came from
REASON_HEADER = "streamrec-reason"


def read_all(conf: dict[str, Any], topic: str, timeout_s: float) -> Iterator[Any]:
    """Every record of ``topic``, until librdkafka reports the end of each partition.

    The end is the high watermark of the Fetch answers (partition EOF), not
    ListOffsets, which the embedded broker under-reports for batched records.
    """
    consumer = Consumer({**conf, "group.id": "streamrec-check-lists", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        if meta.error is not None:
            raise SystemExit(f"topic {topic}: {meta.error}")
        partitions = set(meta.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        while at_end != partitions:
            msg = consumer.poll(timeout_s)
            if msg is None:
                raise SystemExit(f"topic {topic}: nothing within {timeout_s} s; at the end of {sorted(at_end)} "
                                 f"of {sorted(partitions)}")
            error = msg.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    continue
                raise SystemExit(f"topic {topic}: {error}")
            at_end.discard(msg.partition())
            yield msg
    finally:
        consumer.close()


def check(conf: dict[str, Any], clicks: str, recommendations: str, dead_letter: str,
          timeout_s: float = 10.0) -> dict[str, Any]:
    click_positions = {(m.partition(), m.offset()) for m in read_all(conf, clicks, timeout_s)}
    answered: Counter[tuple[int, int]] = Counter()
    replayed = 0
    for m in read_all(conf, recommendations, timeout_s):
        body = json.loads(m.value())
        source = body["source"]
        if source["topic"] == clicks:
            answered[(int(source["partition"]), int(source["offset"]))] += 1
            replayed += bool(body.get("replayed"))
    dead: set[tuple[int, int]] = set()
    reasons: Counter[str] = Counter()
    for m in read_all(conf, dead_letter, timeout_s):
        headers = {k: (v or b"").decode("utf-8", "replace") for k, v in (m.headers() or [])}
        topic, _, rest = headers.get(SOURCE_HEADER, "").partition("/")
        partition, _, offset = rest.partition("/")
        if topic == clicks and partition.isdigit() and offset.isdigit():
            dead.add((int(partition), int(offset)))
        reasons[headers.get(REASON_HEADER, "?")] += 1
    missing = sorted(click_positions - set(answered) - dead)
    return {
        "clicks": len(click_positions),
        "lists": sum(answered.values()),
        "clicks_with_a_list": len(set(answered) & click_positions),
        "duplicated_lists": sum(n - 1 for n in answered.values() if n > 1),
        "replayed_lists": replayed,
        "dead_letters": sum(reasons.values()),
        "dead_letter_reasons": dict(sorted(reasons.items())),
        "missing": len(missing),
        "missing_examples": missing[:10],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bootstrap", required=True, help="host:port[,host:port...]")
    p.add_argument("--clicks", default="clicks")
    p.add_argument("--recommendations", default="recommendations")
    p.add_argument("--dead-letter", default="clicks-dlq")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a record or metadata")
    p.add_argument("--config", action="append", default=[], metavar="KEY=VALUE", help="librdkafka setting")
    args = p.parse_args(argv)
    conf: dict[str, Any] = {"bootstrap.servers": args.bootstrap}
    for item in args.config:
        key, _, value = item.partition("=")
        conf[key] = value
    result = check(conf, args.clicks, args.recommendations, args.dead_letter, args.timeout)
    print(json.dumps(result))
    return 1 if result["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
