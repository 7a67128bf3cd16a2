"""The soak's per-window figures from two /metrics scrapes (stream_app/lab/soak.py)."""

from __future__ import annotations

import math

from stream_app.lab.soak import RECEIVE_TO_PUBLISH, histogram_buckets, histogram_quantile

INF = float("inf")


def test_processing_buckets_are_read_from_the_scrape() -> None:
    scrape = {'streamrec_processing_seconds_bucket{le="0.01"}': 3.0,
              'streamrec_processing_seconds_bucket{le="+Inf"}': 5.0,
              'streamrec_processing_seconds_count': 5.0,
              'streamrec_batch_size_bucket{le="1.0"}': 9.0}
    assert histogram_buckets(scrape) == {0.01: 3.0, INF: 5.0}


def test_the_quantile_is_of_the_observations_between_the_scrapes() -> None:
    before = {0.01: 90.0, 0.1: 100.0, INF: 100.0}
    after = {0.01: 90.0, 0.1: 200.0, INF: 200.0}  # all 100 new ones in (0.01, 0.1]
    assert math.isclose(histogram_quantile(before, after, 0.5), 0.01 + 0.09 * 0.5)
    assert math.isclose(histogram_quantile(before, after, 0.99), 0.01 + 0.09 * 0.99)


def test_the_first_bucket_starts_at_zero_and_the_open_one_returns_its_lower_bound() -> None:
    assert math.isclose(histogram_quantile({}, {0.01: 10.0, INF: 10.0}, 0.5), 0.005)
    assert histogram_quantile({}, {0.01: 0.0, 0.1: 0.0, INF: 4.0}, 0.99) == 0.1


def test_no_observations_give_nan() -> None:
    assert math.isnan(histogram_quantile({0.01: 5.0, INF: 5.0}, {0.01: 5.0, INF: 5.0}, 0.99))
    assert math.isnan(histogram_quantile({}, {}, 0.99))


def test_the_workers_share_is_read_from_its_own_histogram() -> None:
    scrape = {'streamrec_processing_seconds_bucket{le="0.01"}': 3.0,
              'streamrec_receive_to_publish_seconds_bucket{le="0.05"}': 7.0,
              'streamrec_receive_to_publish_seconds_bucket{le="+Inf"}': 8.0}
    assert histogram_buckets(scrape, RECEIVE_TO_PUBLISH) == {0.05: 7.0, INF: 8.0}


def test_latency_is_steady_only_against_the_first_window() -> None:
    from stream_app.lab.soak import SoakReport, Window

    def window(t: float, p99: float) -> Window:
        return Window(t_s=t, rss_bytes=100.0, clicks=10, p50_s=p99 / 2, p99_s=p99, worker_p99_s=0.04)

    # a rise inside the warm-up (the first quarter) counts: 0.1 -> 0.25 is 2.5x, though 0.2 -> 0.25 is not
    r = SoakReport(saturated_rate=10.0, rate=5.0, seconds=400.0, clicks=40, lost=0, dead_letters=0, errors=0,
                   rss_warm_bytes=100.0, rss_end_bytes=100.0, rss_max_bytes=100.0, warmup_s=150.0,
                   windows=[window(100, 0.1), window(200, 0.2), window(300, 0.2), window(400, 0.25)])
    assert math.isclose(r.p99_ratio, 2.5) and not r.p99_steady and not r.ok
    assert math.isclose(r.worker_p99_ratio, 1.0)
