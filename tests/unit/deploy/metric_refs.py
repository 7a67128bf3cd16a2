"""Checks that PromQL only names exported metrics and labels they carry."""

from __future__ import annotations

from typing import Iterable

from .exported_metrics import TARGET_LABELS, resolve
from .promql import selectors


def unknown_references(exprs: Iterable[str], defined: Iterable[str] = ()) -> list[str]:
    """Problems found: a metric nobody exports, or a label matcher on a label it lacks.

    `defined` are names made by recording rules, accepted as they are."""
    defined = set(defined)
    problems: list[str] = []
    for expr in exprs:
        for sel in selectors(expr):
            if sel.name in defined:
                continue
            found = resolve(sel.name)
            if found is None:
                problems.append(f"{sel.name}: not an exported metric (in {expr!r})")
                continue
            _, metric = found
            if metric.type == "default":
                continue  # process_*/python_*: labels not listed
            extra = sel.labels - metric.labels - TARGET_LABELS
            if extra:
                problems.append(f"{sel.name}: has no label(s) {sorted(extra)} (in {expr!r})")
    return problems
