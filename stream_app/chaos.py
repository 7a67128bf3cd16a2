"""Placeholder: `streamrec chaos` is being written."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds no command yet."""
