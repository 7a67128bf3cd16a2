"""Where the worker's time goes: py-spy raw stacks (``py-spy record -f raw``) summed into named parts.

``streamrec bench --worker-only N --profile-s S`` records the stacks and prints
this summary. Each sample goes to the first part, walking from the innermost
frame outwards, whose pattern matches a frame; asyncio's own frames count for
their caller, and samples parked in the event loop's ``select`` (or a thread's
wait) are "idle". Pure: text in, rows out.
"""

from __future__ import annotations

import re
from typing import Iterable

# (part, frame patterns), innermost match wins; the order only breaks ties within one frame
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("idle (event loop select, thread waits)", ("select (selectors.py", "wait (threading.py", "_wait_for_tstate_lock",
                                               "epoll", "poll (selectors.py")),
    ("scoring: exact product and top-k / ANN search", ("ranking.py",)),
    ("recurrent step (GRU) and state encode/decode", ("models/", "state.py", "advance (")),
    ("lists: building and JSON encoding", ("stream_app/core/records.py", "json/encoder.py")),
    ("producing: aiokafka sender, Faust producer buffer", ("aiokafka/producer", "faust/transport/producer",
                                                          "ProducerBuffer", "send_soon")),
    ("table and RocksDB: changelog write, get/put", ("rocksdict", "faust/stores", "faust/tables")),
    ("consuming: aiokafka fetcher, Faust consumer", ("aiokafka/consumer", "faust/transport/consumer",
                                                    "faust/transport/drivers/aiokafka")),
    ("Faust stream machinery: drainer, acks, conductor", ("faust/streams", "faust/channels", "faust/transport/conductor",
                                                         "faust/agents", "stream_app/worker/batching.py")),
    ("worker core: waves, replay guard, outcomes (recommender.py)", ("stream_app/core/recommender.py",)),
    ("worker shell: batching, validation, metrics", ("stream_app/", "prometheus_client")),
)
LOOP = "event loop itself (asyncio)"
OTHER = "other"
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")


def part_of(frames: list[str]) -> str:
    """The part of one stack; asyncio frames count for the code that called them (a socket write
    for the producer that sent, a task switch for the stream that awaited), except the idle ``select``."""
    (idle_name, idle_patterns), rest = PARTS[0], PARTS[1:]
    in_loop = False
    for frame in reversed(frames):  # innermost first
        if any(p in frame for p in idle_patterns):
            return idle_name
        if "asyncio/" in frame:
            in_loop = True
            continue
        for name, patterns in rest:
            if any(p in frame for p in patterns):
                return name
    return LOOP if in_loop else OTHER


def summarize(lines: Iterable[str]) -> list[tuple[str, int, float]]:
    """``(part, samples, share)`` rows, largest first, from py-spy raw lines ``frame;frame;... COUNT``."""
    totals: dict[str, int] = {}
    for line in lines:
        m = _LINE.match(line.strip())
        if not m:
            continue
        part = part_of(m.group("stack").split(";"))
        totals[part] = totals.get(part, 0) + int(m.group("count"))
    n = sum(totals.values()) or 1
    return sorted(((p, c, c / n) for p, c in totals.items()), key=lambda r: -r[1])


def format_summary(rows: list[tuple[str, int, float]]) -> str:
    out = ["| share | samples | part |", "|---|---|---|"]
    out += [f"| {share * 100:.1f} % | {count} | {part} |" for part, count, share in rows]
    return "\n".join(out)
