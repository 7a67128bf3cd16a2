"""The command line: ``streamrec demo | worker | broker | replay | train | evaluate | prepare | tune | report``."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from pathlib import Path

from pydantic import ValidationError

from stream_app.errors import StreamrecError
from stream_app.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SystemExit(f"streamrec: bad setting {where}: {first['msg']} (see docs/operations.md#settings)") from None


def cmd_broker(args: argparse.Namespace) -> int:
    from stream_app.brokers.embedded import EmbeddedBroker

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with EmbeddedBroker(port=args.port) as broker:
        print(f"embedded broker (Tansu, in memory) ready at {broker.bootstrap_servers} (pid {broker.pid})",
              flush=True)
        print(f"  export STREAMREC_KAFKA__BOOTSTRAP_SERVERS={broker.bootstrap_servers} "
              "STREAMREC_KAFKA__EMBEDDED=true", flush=True)
        while not stop.wait(0.5):
            if broker._proc is not None and broker._proc.poll() is not None:
                print("embedded broker exited", file=sys.stderr)
                return 1
    print("embedded broker stopped", flush=True)
    return 0


def cmd_kafka(args: argparse.Namespace) -> int:
    from stream_app.brokers.kafka import KafkaCluster

    settings = _settings()
    b = settings.broker
    if args.fetch_only:
        from stream_app.brokers.kafka import cache_dir, java_binary, kafka_libs

        java_binary()
        libs = kafka_libs(args.version or b.kafka_version, cache_dir(b.kafka_cache_dir))
        print(f"Apache Kafka {args.version or b.kafka_version} jars in {libs}", flush=True)
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster = KafkaCluster(nodes=args.nodes or b.kafka_nodes, version=args.version or b.kafka_version,
                           heap_mb=b.kafka_heap_mb, cache=b.kafka_cache_dir)
    with cluster:
        pids = ", ".join(str(n.pid) for n in cluster.nodes)
        print(f"Apache Kafka {cluster.version}, {len(cluster.nodes)} node(s), KRaft, data on {cluster.root}, "
              f"ready at {cluster.bootstrap_servers} (pids {pids})", flush=True)
        print(f"  export STREAMREC_KAFKA__BOOTSTRAP_SERVERS={cluster.bootstrap_servers}", flush=True)
        while not stop.wait(0.5):
            dead = [n.node_id for n in cluster.nodes if not n.alive()]
            if dead and not args.keep_going:
                print(f"Kafka node(s) {dead} exited: {cluster.node(dead[0]).log_tail()}", file=sys.stderr)
                return 1
    print("Apache Kafka stopped", flush=True)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from stream_app.brokers import local_broker
    from stream_app.worker import start as worker

    settings = _settings()
    if args.model:
        settings = settings.model_copy(update={"model": settings.model.model_copy(update={"path": Path(args.model)})})
    with local_broker(settings) as (broker, settings):
        if broker is not None:
            print(f"no STREAMREC_KAFKA__BOOTSTRAP_SERVERS: started a local {settings.broker.kind} broker at "
                  f"{broker.bootstrap_servers}", flush=True)
        return worker.run(settings)


def cmd_segments(args: argparse.Namespace) -> int:
    import json

    from stream_app.lab.segments import segments

    settings = _settings()
    if settings.kafka.needs_embedded:
        raise SystemExit("streamrec segments: set STREAMREC_KAFKA__BOOTSTRAP_SERVERS (the cluster the workers use)")
    res = segments(settings, clusters=args.clusters, seed=args.seed, publish=not args.dry_run)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{res['users']} users in {res['segments']} segments (sizes {res['sizes']}, mean cosine to the "
              f"centre {res['mean_similarity']}); published {res['published']} records to {res['topic']}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from stream_app.lab.replay import catalogue_messages, click_messages, publish_catalogue, read_log, replay
    from stream_app.worker.topics import ensure_topics

    settings = _settings()
    if settings.kafka.needs_embedded:
        raise SystemExit("streamrec replay: set STREAMREC_KAFKA__BOOTSTRAP_SERVERS (e.g. from `streamrec broker`)")
    if not args.tsv and not args.catalogue and not args.profiles:
        raise SystemExit("streamrec replay: give a click log (TSV), --catalogue FILE, --profiles FILE, or several")
    catalogue = list(catalogue_messages(Path(args.catalogue))) if args.catalogue else []  # whole files read first:
    profiles = list(catalogue_messages(Path(args.profiles), "user_id")) if args.profiles else []  # a bad line
    ensure_topics(settings)                                                                         # publishes nothing
    if catalogue:  # first, so the worker knows the items before the clicks on them
        n = publish_catalogue(settings, catalogue)
        print(f"published {n} catalogue records to {settings.topics.items}", flush=True)
    if profiles:
        n = publish_catalogue(settings, profiles, topic=settings.topics.users)
        print(f"published {n} profile records to {settings.topics.users}", flush=True)
    if args.tsv:
        clicks = read_log(Path(args.tsv), limit=args.limit)
        n = replay(settings, click_messages(clicks, args.user_prefix), rate=args.rate)
        print(f"replayed {n} clicks to {settings.topics.clicks}", flush=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stream_app.lab.demo import run_demo

    return run_demo(_settings(), args)


# Modules that add their own sub-commands with ``register(subparsers)``; each is
# imported only when the parser is built, and imports its heavy parts lazily.
COMMAND_MODULES = ("stream_app.offline_cli", "stream_app.lab.chaos", "stream_app.lab.bench", "stream_app.lab.agreement",
                   "stream_app.lab.swap")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamrec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu, in memory)")
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: a free one)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("kafka", help="run Apache Kafka (KRaft, on loopback, data on tmpfs) until Ctrl-C / SIGTERM")
    p.add_argument("--nodes", type=int, default=0, help="1 (default) or 3 for a replicated cluster")
    p.add_argument("--version", default="", help="Kafka version (default STREAMREC_BROKER__KAFKA_VERSION, 3.9.1)")
    p.add_argument("--fetch-only", action="store_true", help="fetch the jars into the cache and exit")
    p.add_argument("--keep-going", action="store_true",
                   help="stay up when a node dies (faults injected by hand: restart it yourself)")
    p.set_defaults(func=cmd_kafka)

    p = sub.add_parser("worker", help="run the stream worker (settings from STREAMREC_* variables)")
    p.add_argument("--model", help="checkpoint path (overrides STREAMREC_MODEL__PATH)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("segments", help="cluster the users' long-term vectors (user-vectors topic) into segments, "
                       "one record per user on the user-segments topic")
    p.add_argument("--clusters", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="print the segments, publish nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_segments)

    p = sub.add_parser("replay", help="produce a GRU4Rec TSV click log to the clicks topic, a catalogue to the items topic")
    p.add_argument("tsv", nargs="?", default="")
    p.add_argument("--catalogue", default="", help="S3-Rec item2attributes JSON or JSON Lines of items records "
                   "(docs/input.md#catalogue), published before the clicks")
    p.add_argument("--profiles", default="", help="user2attributes JSON or JSON Lines of users records "
                   "(docs/input.md#profiles), published before the clicks")
    p.add_argument("--rate", type=float, default=0.0, help="clicks per second (0: as fast as possible)")
    p.add_argument("--limit", type=int, default=0, help="first N clicks only")
    p.add_argument("--user-prefix", default="u", help="user id = prefix + session id")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("demo", help="broker + model + worker + a replay of real test sessions, with a live view")
    p.add_argument("--data", default=None, help="'movielens' (default: MovieLens-100k from the recbole wheel on "
                   "PyPI), a name under STREAMREC_LAB__DATA_DIR (e.g. rsc15-100k), or a folder with "
                   "train_full.tsv and test.tsv")
    p.add_argument("--limit", type=int, default=0, help="replay only the first N test clicks")
    p.add_argument("--rate", type=float, default=1000.0,
                   help="replay rate, clicks/s (0: as fast as possible; latency is then queueing time)")
    p.add_argument("--retrain", action="store_true", help="train a new model even if one is cached")
    p.add_argument("--work-dir", default="var/demo", help="model cache and worker data")
    p.set_defaults(func=cmd_demo)

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except StreamrecError as exc:
        print(f"streamrec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
