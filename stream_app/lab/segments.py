"""``streamrec segments``: the users' long-term vectors, clustered into segments, one record per user.

The vectors are the compacted ``user-vectors`` topic that session-aware workers
write at each user's session gap (stream_app/core/similar.py), read whole; the
clusters are spherical k-means (faiss) over the unit vectors; each user's
segment goes to the compacted ``user-segments`` topic, key user id, value
``{"segment": n, "segments": k, "similarity": cosine to the segment's centre,
"model_version": ...}``. Run it again to refresh the segments (a cron job, say).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson

from stream_app.core.similar import UserIndex, decode_vector
from stream_app.errors import DatasetError, InvalidRecord
from stream_app.lab.harness import TopicReader
from stream_app.lab.replay import publish_catalogue
from stream_app.settings import Settings


def read_vectors(settings: Settings, idle_s: float = 2.0, timeout_s: float = 120.0) -> tuple[UserIndex, int]:
    """Every user's latest vector from the topic (read until ``idle_s`` without a record), and the count
    of records that did not decode (skipped)."""
    index, bad = UserIndex(), 0
    reader = TopicReader(settings, settings.topics.user_vectors)
    try:
        last, deadline = time.monotonic(), time.monotonic() + timeout_s
        while time.monotonic() - last < idle_s and time.monotonic() < deadline:
            records = reader.poll()
            if records:
                last = time.monotonic()
            good = []
            for r in records:
                try:
                    good.append(decode_vector(r.key, r.value, max_bytes=settings.worker.max_event_bytes))
                except InvalidRecord:
                    bad += 1
            index.apply(good)
    finally:
        reader.close()
    return index, bad


def cluster(unit: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means of unit rows (n, U): (segment per row (n,), cosine to its centre (n,))."""
    try:
        import faiss
    except ImportError:
        raise DatasetError("streamrec segments needs faiss: pip install 'streamrec[ann]'") from None
    km = faiss.Kmeans(unit.shape[1], k, niter=25, seed=seed, spherical=True, verbose=False)
    km.train(np.ascontiguousarray(unit, dtype=np.float32))
    sims, labels = km.index.search(np.ascontiguousarray(unit, dtype=np.float32), 1)
    return labels[:, 0].astype(np.int64), sims[:, 0]


def segments(settings: Settings, clusters: int = 8, seed: int = 0, publish: bool = True,
             model_version: str = "") -> dict[str, Any]:
    """Read, cluster, publish; returns the summary ``streamrec segments --json`` prints."""
    index, bad = read_vectors(settings)
    users = [u for u in index.ids if u is not None]
    if len(users) < clusters:
        raise DatasetError(f"{len(users)} user vectors on {settings.topics.user_vectors!r}, fewer than "
                           f"--clusters {clusters} (a session-aware model writes a user's vector at its first "
                           "session gap)")
    unit = np.stack([index.matrix[index.rows[u]] for u in users])  # (n, U)
    labels, sims = cluster(unit, clusters, seed)
    sent = 0
    if publish:
        from stream_app.worker.topics import ensure_topic

        ensure_topic(settings, settings.topics.segments, {"cleanup.policy": "compact"})
        sent = publish_catalogue(settings, ((u.encode(), orjson.dumps({
            "segment": int(s), "segments": clusters, "similarity": round(float(c), 6), "model_version": model_version,
        })) for u, s, c in zip(users, labels, sims)), topic=settings.topics.segments)
    sizes = np.bincount(labels, minlength=clusters)
    return {"users": len(users), "undecodable_records": bad, "segments": clusters, "sizes": sizes.tolist(),
            "mean_similarity": round(float(sims.mean()), 4), "published": sent,
            "topic": settings.topics.segments if publish else None}


__all__ = ["cluster", "read_vectors", "segments"]
