"""The profile summary of `streamrec bench --worker-only --profile-s` (stream_app/lab/profile.py)."""

from __future__ import annotations

from stream_app.lab.profile import OTHER, format_summary, summarize

RAW = """\
process 1;MainThread;run (asyncio/base_events.py:600);select (selectors.py:468) 50
process 1;MainThread;_run (asyncio/events.py:84);process (stream_app/worker/agents.py:100);score (stream_app/core/ranking.py:95) 30
process 1;MainThread;process (stream_app/worker/agents.py:100);to_json (stream_app/core/records.py:40);encode (json/encoder.py:200) 10
process 1;MainThread;send (aiokafka/producer/producer.py:400);_wait (threading.py:320) 4
process 1;MainThread;mystery (somewhere.py:1) 6
not a sample line
"""


def test_each_sample_goes_to_its_innermost_known_part() -> None:
    rows = {part.split(":")[0].split(" (")[0]: (count, share) for part, count, share in summarize(RAW.splitlines())}
    assert rows["idle"] == (54, 0.54)  # a producer waiting on a thread lock is idle, not producing
    assert rows["scoring"] == (30, 0.30)
    assert rows["lists"] == (10, 0.10)
    assert rows[OTHER] == (6, 0.06)


def test_the_summary_is_a_markdown_table_largest_first() -> None:
    text = format_summary(summarize(RAW.splitlines()))
    lines = text.splitlines()
    assert lines[0] == "| share | samples | part |"
    assert lines[2].startswith("| 54.0 % | 54 | idle")


def test_asyncio_frames_count_for_their_caller() -> None:
    from stream_app.lab.profile import LOOP, part_of

    write = ["run (asyncio/base_events.py:1)", "send (aiokafka/producer/sender.py:9)",
             "write (asyncio/selector_events.py:1057)"]
    assert part_of(write).startswith("producing")
    assert part_of(["_run_once (asyncio/base_events.py:1907)"]) == LOOP
