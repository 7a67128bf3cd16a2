"""Every Prometheus metric of the worker, declared in one place with an injected registry.

Base units (seconds, bytes, totals); no user or item ids as labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BYTES_BUCKETS = (64, 128, 256, 512, 768, 1024, 2048, 4096, 8192)


@dataclass(frozen=True)
class Metrics:
    """The worker's metrics; build with ``Metrics.create(registry)``."""

    registry: CollectorRegistry
    clicks: Counter
    published: Counter
    dead_letters: Counter
    unknown_items: Counter
    state_resets: Counter
    replayed: Counter
    processing: Histogram
    stage: Histogram
    click_to_publish: Histogram
    receive_to_publish: Histogram
    batch_size: Histogram
    state_bytes: Histogram
    users: Gauge
    online_predictions: Counter
    online_hits: Counter
    online_rr: Counter
    model_info: Gauge
    model_swaps: Counter
    states_carried: Counter
    lag_messages: Gauge
    lag_seconds: Gauge
    ready: Gauge
    rebalances: Counter
    recovery_seconds: Gauge
    catalogue_records: Counter
    catalogue_items: Gauge
    catalogue_dead_letters: Counter
    profile_records: Counter
    profiles: Gauge
    profile_dead_letters: Counter
    user_vector_records: Counter
    user_vectors: Gauge
    short_lists: Counter

    def serving(self, ckpt: Any) -> None:
        """``streamrec_model_info`` names the model being served (one series: a swapped-out model's is removed)."""
        cfg = getattr(ckpt.model, "config", None)
        self.model_info.clear()
        self.model_info.labels(ckpt.version, str(getattr(cfg, "cell", "gru")),
                               str(getattr(cfg, "hidden", ckpt.model.state_size)), str(len(ckpt.item_ids))).set(1)

    @classmethod
    def create(cls, registry: CollectorRegistry) -> "Metrics":
        r = registry
        m = cls(
            registry=r,
            clicks=Counter("streamrec_clicks_consumed", "Click messages read from the clicks topic", registry=r),
            published=Counter("streamrec_recommendations_published", "Recommendation lists sent",
                              ["source"], registry=r),
            dead_letters=Counter("streamrec_dead_letters", "Click messages sent to the dead-letter topic",
                                 ["reason"], registry=r),
            unknown_items=Counter("streamrec_unknown_items", "Clicks on items the model does not know", registry=r),
            state_resets=Counter("streamrec_state_resets", "User hidden states started over", ["reason"], registry=r),
            replayed=Counter("streamrec_replayed_clicks", "Redelivered clicks not applied twice (replay guard)",
                             registry=r),
            processing=Histogram("streamrec_processing_seconds", "Time to process one micro-batch of clicks",
                                 buckets=LATENCY_BUCKETS, registry=r),
            stage=Histogram("streamrec_stage_seconds", "Time of one list stage over a micro-batch (score: the "
                            "ranker's candidates; also_like: the sampled list; rerank: the re-rankers; cap: the "
                            "per-attribute cap)", ["stage"],
                            buckets=LATENCY_BUCKETS, registry=r),
            click_to_publish=Histogram("streamrec_click_to_publish_seconds",
                                       "From the click's timestamp to its list being handed to the producer",
                                       buckets=LATENCY_BUCKETS, registry=r),
            receive_to_publish=Histogram("streamrec_receive_to_publish_seconds",
                                         "From a stream taking the click (after the consumer's buffer) to its list "
                                         "being handed to the producer: micro-batching and processing",
                                         buckets=LATENCY_BUCKETS, registry=r),
            batch_size=Histogram("streamrec_batch_size", "Clicks per micro-batch", buckets=BATCH_BUCKETS,
                                 registry=r),
            state_bytes=Histogram("streamrec_state_bytes", "Encoded size of a user's state",
                                  buckets=BYTES_BUCKETS, registry=r),
            users=Gauge("streamrec_users", "Users with a state in this worker's tables (approximate)", registry=r),
            online_predictions=Counter("streamrec_online_predictions",
                                       "Served lists scored against the user's next (known) click", registry=r),
            online_hits=Counter("streamrec_online_hits_at_20", "Next clicks found in the served top 20",
                                registry=r),
            online_rr=Counter("streamrec_online_reciprocal_rank_at_20",
                              "Sum of 1/rank of next clicks in the served top 20", registry=r),
            model_info=Gauge("streamrec_model_info", "The model being served",
                             ["version", "cell", "hidden", "items"], registry=r),
            model_swaps=Counter("streamrec_model_swaps", "New checkpoints seen by STREAMREC_MODEL__WATCH_S: "
                                "swapped in, or failed to load (the old model keeps serving)", ["outcome"], registry=r),
            states_carried=Counter("streamrec_states_carried", "User states of a replaced model carried into the "
                                   "new one on the user's next click (hot swap)", registry=r),
            lag_messages=Gauge("streamrec_consumer_lag_messages",
                               "Clicks not yet read, from the Fetch high watermark", ["partition"], registry=r),
            lag_seconds=Gauge("streamrec_consumer_lag_seconds",
                              "Now minus the timestamp of the last processed click", registry=r),
            ready=Gauge("streamrec_ready", "1 when tables are recovered and the model is loaded", registry=r),
            rebalances=Counter("streamrec_rebalances", "Consumer group rebalances seen", registry=r),
            recovery_seconds=Gauge("streamrec_recovery_seconds", "Duration of the last table recovery",
                                   registry=r),
            catalogue_records=Counter("streamrec_catalogue_records", "Catalogue records applied from the items topic",
                                      registry=r),
            catalogue_items=Gauge("streamrec_catalogue_items", "Items of the live catalogue by state (trained or new "
                                  "since training; available, unavailable; new without a known attribute)",
                                  ["state"], registry=r),
            catalogue_dead_letters=Counter("streamrec_catalogue_dead_letters",
                                           "Catalogue records sent to the catalogue's dead-letter topic", ["reason"],
                                           registry=r),
            profile_records=Counter("streamrec_profile_records", "Profile records applied from the users topic",
                                    registry=r),
            profiles=Gauge("streamrec_profiles", "Users with a live profile (every worker holds all)", registry=r),
            profile_dead_letters=Counter("streamrec_profile_dead_letters",
                                         "Profile records sent to the profiles' dead-letter topic", ["reason"],
                                         registry=r),
            user_vector_records=Counter("streamrec_user_vector_records", "User-vector records applied from the "
                                        "user-vectors topic (the similar-users index)", registry=r),
            user_vectors=Gauge("streamrec_user_vectors", "Users in the similar-users index (every worker holds all)",
                               registry=r),
            short_lists=Counter("streamrec_short_lists", "Lists published with fewer than k items: the candidates "
                                "ran out after exclusions, unavailable items and caps", registry=r),
        )
        for outcome in ("swapped", "failed"):  # exported at 0 from the start: a dashboard sees no swap yet
            m.model_swaps.labels(outcome)
        return m
