"""Find the metric names (and the label names matched on them) in PromQL expressions.

Not a full PromQL parser: a tokenizer and a walk that knows where an identifier is a
metric name and where it is a function, a keyword, a label name or a duration. It also
understands Grafana's variables ($job, ${job}, $__rate_interval) and its
label_values(metric, label) template query. Used by the deploy tests on the Grafana
dashboard and the Prometheus rules; the lead's integration test can reuse
`dashboard_expressions`, `rules_expressions` and `selectors` to check a scraped worker.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?(?:\d+(?:ms|[smhdwy]))*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>@,(){}\[\]:])
    """,
    re.VERBOSE,
)

# Words that are never metric names where they appear bare.
KEYWORDS = frozenset({
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
})
# Clauses followed by a parenthesised list of label names.
LABEL_LIST_CLAUSES = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
MATCH_OPS = frozenset({"=", "!=", "=~", "!~"})
# Aggregation operators: `sum by (job) (...)` has the clause between the name and "(".
AGGREGATIONS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
})


@dataclass(frozen=True)
class Selector:
    """One vector selector: the metric name and the label names it matches on."""

    name: str
    labels: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class Token:
    kind: str
    text: str


def tokenize(expr: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot tokenize PromQL at {pos}: {expr[pos:pos + 30]!r} in {expr!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, m.group()))
        pos = m.end()
    return tokens


def _skip_group(tokens: list[Token], i: int, open_: str, close: str) -> int:
    """tokens[i] is `open_`: the index after its matching `close`."""
    depth = 0
    while i < len(tokens):
        t = tokens[i].text
        if tokens[i].kind == "op" and t == open_:
            depth += 1
        elif tokens[i].kind == "op" and t == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"unbalanced {open_}{close}")


def _matchers(tokens: list[Token], i: int) -> tuple[list[tuple[str, str]], int]:
    """tokens[i] is `{`: the (label, value) pairs inside and the index after `}`."""
    pairs: list[tuple[str, str]] = []
    i += 1
    while i < len(tokens) and tokens[i].text != "}":
        t = tokens[i]
        if t.kind == "ident" and i + 2 < len(tokens) and tokens[i + 1].text in MATCH_OPS:
            value = tokens[i + 2]
            pairs.append((t.text, value.text[1:-1] if value.kind == "string" else value.text))
            i += 3
        elif t.kind == "string" and i + 2 < len(tokens) and tokens[i + 1].text in MATCH_OPS:
            # Prometheus 3 quoted label names: {"label"="value"}; a bare "name" is the metric
            pairs.append((t.text[1:-1], tokens[i + 2].text[1:-1]))
            i += 3
        else:
            i += 1
    return pairs, i + 1


def selectors(expr: str) -> list[Selector]:
    """Every vector selector in a PromQL expression (or a Grafana template query)."""
    tokens = tokenize(expr)
    found: list[Selector] = []
    i = 0
    label_values_depth: list[int] = []  # paren depths of open label_values( calls
    depth = 0
    while i < len(tokens):
        t = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if t.kind == "op" and t.text == "[":
            i = _skip_group(tokens, i, "[", "]")  # range or subquery: durations only
            continue
        if t.kind == "op" and t.text == "(":
            depth += 1
        elif t.kind == "op" and t.text == ")":
            if label_values_depth and label_values_depth[-1] == depth:
                label_values_depth.pop()
            depth -= 1
        elif t.kind == "op" and t.text == "," and label_values_depth and label_values_depth[-1] == depth:
            # label_values(metric, LABEL): skip the label name
            i += 2
            continue
        elif t.kind == "op" and t.text == "{":
            # a selector without a name: {__name__="..."}
            pairs, i = _matchers(tokens, i)
            names = [v for k, v in pairs if k == "__name__"]
            if names:
                found.append(Selector(names[0], frozenset(k for k, _ in pairs if k != "__name__")))
            continue
        elif t.kind == "ident":
            word = t.text
            if nxt is not None and nxt.text == "(":
                if word.lower() in LABEL_LIST_CLAUSES:
                    i = _skip_group(tokens, i + 1, "(", ")")
                    continue
                if word == "label_values":
                    label_values_depth.append(depth + 1)
                i += 1  # a function call: its arguments are walked as usual
                continue
            if word.lower() in KEYWORDS or (
                word.lower() in AGGREGATIONS and nxt is not None and nxt.text.lower() in ("by", "without")
            ):
                i += 1
                continue
            labels: frozenset[str] = frozenset()
            i += 1
            if nxt is not None and nxt.text == "{":
                pairs, i = _matchers(tokens, i)
                labels = frozenset(k for k, _ in pairs)
            found.append(Selector(word, labels))
            continue
        i += 1
    return found


def metric_names(exprs: Iterable[str]) -> set[str]:
    return {s.name for e in exprs for s in selectors(e)}


# --- where the expressions are -------------------------------------------------------


def _walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from _walk_panels(p.get("panels", []))


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return list(_walk_panels(dashboard.get("panels", [])))


def dashboard_expressions(dashboard: dict[str, Any] | str | Path) -> list[str]:
    """PromQL of every panel target and every query template variable."""
    if not isinstance(dashboard, dict):
        dashboard = json.loads(Path(dashboard).read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard_panels(dashboard) for t in p.get("targets", []) if t.get("expr")]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if q:
                exprs.append(q)
    return exprs


def rules_expressions(rules: dict[str, Any] | str | Path) -> tuple[list[str], set[str]]:
    """(every rule's expr, the names defined by recording rules)."""
    if not isinstance(rules, dict):
        rules = yaml.safe_load(Path(rules).read_text(encoding="utf-8"))
    exprs: list[str] = []
    recorded: set[str] = set()
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            exprs.append(str(rule["expr"]))
            if "record" in rule:
                recorded.add(rule["record"])
    return exprs, recorded


_GRAFANA_DURATION_VARS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def substitute_grafana_variables(expr: str) -> str:
    """Grafana variables replaced by plausible values, so that promtool can parse the result."""

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        name = name.split(":")[0]
        return _GRAFANA_DURATION_VARS.get(name, "x")

    return re.sub(r"\$\{(\w+(?::\w+)?)\}|\$(\w+)", repl, expr)
