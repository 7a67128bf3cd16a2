"""The ceiling for ``streamrec bench`` (a): a bare aiokafka consume -> produce loop, no state, no model.

Every click is forwarded unchanged to the output topic, with a header
``src`` = ``partition:offset:timestamp_ms`` so the benchmark can measure
click-to-publish latency exactly as for the worker. Producer settings are
Faust's defaults (acks=all, batching on), consumer offsets are not committed.
Run as a child: ``python -m stream_app.lab.ceiling SERVERS IN_TOPIC OUT_TOPIC [embedded]``;
prints ``ready`` once it holds every partition.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition

from stream_app.worker.transport import adapt_fetch_wait


async def forward(servers: str, source: str, target: str, embedded: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all", linger_ms=0)
    # On the embedded broker only: a short, adaptive Fetch wait, as the worker has there
    # (Tansu holds a Fetch for half its max wait; stream_app/worker/transport.py).
    # Apache Kafka answers a Fetch as soon as records arrive: its defaults stand.
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False, auto_offset_reset="earliest",
                                **({"fetch_max_wait_ms": 5} if embedded else {}))
    await producer.start()
    await consumer.start()
    if embedded:
        adapt_fetch_wait(consumer, 5)
    try:
        parts = await consumer._client.fetch_all_metadata()
        tps = [TopicPartition(source, p) for p in sorted(parts.partitions_for_topic(source) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        print("ready", flush=True)
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=500)
            for tp, records in batches.items():
                for r in records:
                    src = f"{tp.partition}:{r.offset}:{r.timestamp}".encode()
                    await producer.send(target, r.value, key=r.key, headers=[("src", src)])
    finally:
        await consumer.stop()
        await producer.stop()


def main(argv: list[str] | None = None) -> int:
    args = argv or sys.argv[1:]
    servers, source, target = args[:3]
    asyncio.run(forward(servers, source, target, embedded=args[3:4] == ["embedded"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
