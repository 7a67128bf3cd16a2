"""`streamrec bench` at a tiny size: it runs end to end and its last line carries the agreed JSON keys.

Nothing here looks at the figures themselves (benchmarks are run, not asserted on time).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stream_app.lab.bench import default_data_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEYS = {"ceiling_events_per_s", "worker_events_per_s", "naive_events_per_s", "worker_over_ceiling",
        "worker_over_naive", "worker_p99_ms_half_rate", "ann_recall_at_20", "exact_identical_lists",
        "cpu_s_per_1k_per_worker_one", "cpu_s_per_1k_per_worker_two"}


def test_bench_tiny_prints_the_json_keys(small_checkpoint: Path, tmp_path: Path) -> None:
    if not (default_data_dir() / "test.tsv").is_file():
        pytest.skip("the diginetica test sessions are not on this machine")
    cmd = [sys.executable, "-m", "stream_app.cli", "bench", "--tiny", "--json", "--model", str(small_checkpoint),
           "--synthetic-items", "5000", "--work-dir", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert KEYS <= set(summary), sorted(KEYS - set(summary))
    assert summary["worker_events_per_s"] > 0 and 0.0 <= summary["ann_recall_at_20"] <= 1.0
    assert set(summary["runs"]) == {"diginetica", "synthetic"}
    assert 0.0 <= summary["exact_identical_lists"] <= 1.0
    two = summary["scale_out"]["2"]
    assert two["workers"] == 2 and len(two["clicks_per_worker"]) == 2 and len(summary["cpu_s_per_1k_per_worker_two"]) == 2
