"""The scoring of `streamrec swap` (stream_app/lab/swap.py): atomicity per user and online Recall@20 around a swap."""

from __future__ import annotations

from stream_app.core.records import Recommendation, Source
from stream_app.lab.swap import score


def rec(user: str, offset: int, version: str, items: tuple[str, ...], ts: float) -> Recommendation:
    return Recommendation(user, items, (1.0,) * len(items), version, "model", Source("clicks", 0, offset), ts, ts)


def test_swap_score_splits_old_carried_and_later_lists() -> None:
    records = [rec("a", 0, "old", ("x",), 1.0), rec("a", 1, "new", ("y",), 2.0), rec("a", 2, "new", ("z",), 3.0),
               rec("b", 3, "new", ("x",), 4.0), rec("b", 4, "new", ("q",), 5.0)]
    clicked = {("a", 1.0): "w", ("a", 2.0): "x", ("a", 3.0): "z", ("b", 4.0): "v", ("b", 5.0): "x"}
    res = score(records, "old", "new", clicked)
    assert res["atomic_per_user"] and res["users"] == 2 and res["users_across_the_swap"] == 1
    assert res["old_model"] == {"lists": 1, "recall@20": 1.0}  # a's old list held x, a's next click
    assert res["new_model_first_list_after_carry"] == {"lists": 1, "recall@20": 0.0}  # a's first new list held y, the next click was z
    assert res["new_model_later"] == {"lists": 1, "recall@20": 1.0}  # b's list held x, b's next click
    back = records[:2] + [rec("a", 2, "old", ("z",), 3.0)]
    assert not score(back, "old", "new", clicked)["atomic_per_user"]  # old after new: not atomic
