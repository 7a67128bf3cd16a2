"""Chaos tier: each fault injected under steady traffic on its own embedded broker, at a CI size.

Run it alone with ``pytest tests/chaos``; the full-size runs are ``streamrec chaos`` and
``streamrec chaos --soak SECONDS``.
"""
