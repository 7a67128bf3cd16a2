"""The live catalogue: catalogue records in, and in model terms which items may be served and the vectors
of items added after training. Pure: no Faust, no I/O.

A record on the compacted ``items`` topic is keyed by item id; its value is a
JSON object ``{"attributes": [ids...], "available": bool}`` (both optional;
other fields are ignored) or null, a tombstone: the item is gone. Rules and
reasons are in docs/input.md.

- An item the network was trained on keeps its trained vector; the catalogue
  only switches it on and off (its attributes are the training data's).
- An item the network never saw is added with the vector its attributes give
  (``SessionRNN.new_item_vectors``: a zero id part plus the pooled attribute
  embeddings, as training starts unseen items, and the mean bias of the
  trained items sharing its attributes), so it can be recommended and
  clicked (its input vector steps the state) from the next batch on, without
  retraining. One whose attributes are all unknown to the network has no
  vector and stays unrecommendable (counted).
- Unavailable and removed items leave every list produced after the update.

New items get in-memory indices after the trained ones, in the order this
worker saw them; that order is not the same on every worker or after a
restart, so the user state (shared through the changelog) stores them by
:func:`state_code`, a negative number derived from the item id.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Mapping, Sequence

import torch

from models.features import link_owners
from stream_app.core.validate import MAX_ID_CHARS, _exact_parse
from stream_app.errors import InvalidRecord, ModelLoadError

log = logging.getLogger("streamrec.catalogue")
MAX_ATTRIBUTES = 1024  # per item; LastFM's longest tag list is 625
REASONS = ("missing_key", "not_utf8", "bad_value", "too_large", "not_json", "not_object", "duplicate_key",
           "key_mismatch", "bad_type", "internal_error")  # decode_item's reasons, and the reader's for a core failure
NEG_INF = float("-inf")

VectorFn = Callable[[list[list[int]]], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # -> (out, in, bias)


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """One validated catalogue record; ``removed`` for a tombstone (then ``available`` is False)."""

    item_id: str
    attributes: tuple[str, ...] = ()
    available: bool = True
    removed: bool = False


def decode_item(key: bytes | None, value: bytes | None, *, max_bytes: int) -> ItemRecord:
    """Validate one ``items`` record; raises InvalidRecord (never anything else) when it is unusable."""
    item_id, names, body = decode_keyed_attributes(key, value, max_bytes=max_bytes, id_field="item_id")
    if body is None:
        return ItemRecord(item_id, (), False, True)
    available = body.get("available", True)
    if not isinstance(available, bool):
        raise InvalidRecord("bad_type", f"available must be true or false, got {type(available).__name__}")
    return ItemRecord(item_id, names, available, False)


def decode_key(key: bytes | None, what: str) -> str:
    """A record key that is an id: present, UTF-8, at most MAX_ID_CHARS characters (else InvalidRecord)."""
    if key is None or not key:
        raise InvalidRecord("missing_key", f"these records are keyed by {what} id")
    try:
        key_id = bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRecord("not_utf8", "the key is not UTF-8") from None
    if len(key_id) > MAX_ID_CHARS:
        raise InvalidRecord("bad_value", f"{what} id must have 1 to {MAX_ID_CHARS} characters, got {len(key_id)}")
    return key_id


def decode_keyed_attributes(key: bytes | None, value: bytes | None, *, max_bytes: int,
                            id_field: str) -> tuple[str, tuple[str, ...], dict[str, Any] | None]:
    """The rules items and users records share: a UTF-8 id as key, a JSON object with an optional
    ``attributes`` list (strings or integers) or null (a tombstone: body None). Raises InvalidRecord."""
    what = id_field.split("_")[0]
    key_id = decode_key(key, what)
    if value is None:
        return key_id, (), None
    if len(value) > max_bytes:
        raise InvalidRecord("too_large", f"{len(value)} bytes > limit {max_bytes}")
    body = _exact_parse(bytes(value))
    if not isinstance(body, dict):
        raise InvalidRecord("not_object", f"expected a JSON object or null, got {type(body).__name__}")
    if id_field in body and str(body[id_field]) != key_id:
        raise InvalidRecord("key_mismatch", f"{id_field} differs from the message key; key records by {what} id")
    attrs = body.get("attributes", [])
    if not isinstance(attrs, list):
        raise InvalidRecord("bad_type", f"attributes must be a list, got {type(attrs).__name__}")
    if len(attrs) > MAX_ATTRIBUTES:
        raise InvalidRecord("bad_value", f"{len(attrs)} attributes > limit {MAX_ATTRIBUTES}")
    names: list[str] = []
    for a in attrs:
        if isinstance(a, bool) or not isinstance(a, (str, int)):
            raise InvalidRecord("bad_type", f"an attribute must be a string or an integer, got {type(a).__name__}")
        name = str(a)
        if not name or len(name) > MAX_ID_CHARS:
            raise InvalidRecord("bad_value", f"an attribute must have 1 to {MAX_ID_CHARS} characters")
        names.append(name)
    return key_id, tuple(dict.fromkeys(names)), body


def state_code(item_id: str) -> int:
    """The stable negative number a user state stores for an item added through the catalogue."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=4).digest()
    return -1 - (int.from_bytes(digest, "little") & 0x7FFFFFFF)


@dataclass
class Applied:
    """What one call of :meth:`Catalogue.apply` changed, for the metrics and the rankers."""

    added: list[int] = field(default_factory=list)  # new items given a vector (their indices)
    blocked: list[int] = field(default_factory=list)  # trained items switched off
    unblocked: list[int] = field(default_factory=list)  # trained items switched back on
    no_vector: int = 0  # new items none of whose attributes the network knows


class Catalogue:
    """Availability of every item and the vectors of items added after training (indices ``n_base`` on)."""

    def __init__(self, base_index: Mapping[str, int], attribute_names: Sequence[str] | None,
                 vectors: VectorFn | None, out_dim: int, in_dim: int,
                 excluded: Collection[int] = (), excluded_attributes: Collection[str] = (),
                 base_attributes: tuple[Any, Any] | None = None) -> None:
        self.base_index = base_index
        self.excluded = set(excluded)  # trained items never served (STREAMREC_MODEL__EXCLUDED_ATTRIBUTES)
        self.excluded_attributes = set(excluded_attributes)
        self.base_attributes = base_attributes  # (flat, offsets) of the trained items' attributes, for caps
        self._capped: set[int] = set()  # attribute indices a list may hold only so many items of
        self._groups: list[tuple[int, ...]] = []
        self._new_groups: list[tuple[int, ...]] = []
        self._excluded_new: dict[str, bool] = {}  # new item -> carries an excluded attribute
        self.n_base = len(base_index)
        self.attribute_index = {name: j for j, name in enumerate(attribute_names or ())}
        self._vectors = vectors if self.attribute_index else None
        self.blocked: set[int] = set()  # trained items not to serve
        self.new_ids: list[str] = []
        self.new_slot: dict[str, int] = {}
        self.by_code: dict[int, int] = {}  # state code -> index
        self.new_out = torch.zeros(0, out_dim)  # (M, H)
        self.new_in = torch.zeros(0, in_dim)  # (M, E)
        self.new_bias = torch.zeros(0)  # (M,) the item's bias when available, -inf when not
        self.new_base_bias = torch.zeros(0)  # (M,) the bias its attributes give
        self.unrepresented: set[str] = set()  # new items without a usable attribute

    def cap_groups(self, prefix: str) -> None:
        """Cap the attributes whose ids start with ``prefix``: each item's capped attributes, for :meth:`groups_of`."""
        self._capped = {j for name, j in self.attribute_index.items() if name.startswith(prefix)}
        if self.base_attributes is None:
            self._groups = [()] * self.n_base
            return
        flat, offsets = (list(map(int, a)) for a in self.base_attributes)
        capped = self._capped
        self._groups = [tuple(j for j in flat[offsets[i]:offsets[i + 1]] if j in capped) for i in range(self.n_base)]

    def groups_of(self, i: int) -> tuple[int, ...]:
        """The capped attributes of item ``i`` (none before :meth:`cap_groups`)."""
        if i < self.n_base:
            return self._groups[i] if self._groups else ()
        return self._new_groups[i - self.n_base]

    def index_of(self, item_id: str) -> int | None:
        i = self.base_index.get(item_id)
        if i is not None:
            return i
        slot = self.new_slot.get(item_id)
        return None if slot is None else self.n_base + slot

    def apply(self, records: Sequence[ItemRecord]) -> Applied:
        """Fold a batch of records in; later records of one item win."""
        done = Applied()
        latest = {r.item_id: r for r in records}
        fresh: list[tuple[ItemRecord, list[int]]] = []
        for rec in latest.values():
            base = self.base_index.get(rec.item_id)
            if base is not None and base in self.excluded:
                continue  # never served, whatever the catalogue says
            if base is not None:
                if rec.available and base in self.blocked:
                    self.blocked.discard(base)
                    done.unblocked.append(base)
                elif not rec.available and base not in self.blocked:
                    self.blocked.add(base)
                    done.blocked.append(base)
                continue
            if rec.attributes:  # a record without attributes keeps the item's earlier verdict
                self._excluded_new[rec.item_id] = bool(self.excluded_attributes.intersection(rec.attributes))
            if self._excluded_new.get(rec.item_id):
                rec = ItemRecord(rec.item_id, rec.attributes, False, rec.removed)  # known, never served
            slot = self.new_slot.get(rec.item_id)
            known = [self.attribute_index[a] for a in rec.attributes if a in self.attribute_index]
            if slot is not None:
                self.new_bias[slot] = self.new_base_bias[slot] if rec.available else NEG_INF
                if known and not rec.removed:
                    fresh.append((rec, known))  # new attributes: a new vector
            elif rec.removed:
                self.unrepresented.discard(rec.item_id)
            elif not known or self._vectors is None:
                self.unrepresented.add(rec.item_id)
                done.no_vector += 1
            else:
                fresh.append((rec, known))
        if fresh:
            self._set_vectors(fresh, done)
        return done

    def _set_vectors(self, fresh: list[tuple[ItemRecord, list[int]]], done: Applied) -> None:
        assert self._vectors is not None
        out, inp, bias = self._vectors([known for _, known in fresh])  # (F, H), (F, E), (F,)
        grow = [rec for rec, _ in fresh if rec.item_id not in self.new_slot]
        if grow:
            m = len(self.new_ids)
            for j, rec in enumerate(grow):
                self.new_slot[rec.item_id] = m + j
                self.new_ids.append(rec.item_id)
                self.by_code[state_code(rec.item_id)] = self.n_base + m + j
                self.unrepresented.discard(rec.item_id)
                self._new_groups.append(())
                done.added.append(self.n_base + m + j)
            self.new_out = torch.cat([self.new_out, torch.zeros(len(grow), self.new_out.shape[1])])
            self.new_in = torch.cat([self.new_in, torch.zeros(len(grow), self.new_in.shape[1])])
            self.new_bias = torch.cat([self.new_bias, torch.zeros(len(grow))])
            self.new_base_bias = torch.cat([self.new_base_bias, torch.zeros(len(grow))])
        for rec, known in fresh:
            self._new_groups[self.new_slot[rec.item_id]] = tuple(j for j in known if j in self._capped)
        rows = torch.tensor([self.new_slot[rec.item_id] for rec, _ in fresh])
        self.new_out[rows] = out.to(self.new_out.dtype)
        self.new_in[rows] = inp.to(self.new_in.dtype)
        self.new_base_bias[rows] = bias.to(self.new_bias.dtype)
        available = torch.tensor([rec.available for rec, _ in fresh])
        self.new_bias[rows] = torch.where(available, self.new_base_bias[rows], NEG_INF)

    # -- user state: new items by their stable code ----------------------------------------------

    def to_state(self, items: Sequence[int]) -> tuple[int, ...]:
        """In-memory indices -> what the user state stores (new items by :func:`state_code`)."""
        n = self.n_base
        return tuple(i if i < n else state_code(self.new_ids[i - n]) for i in items)

    def from_state(self, items: Sequence[int]) -> tuple[int, ...]:
        """Stored items -> in-memory indices; new items this worker has not seen yet are left out."""
        out = []
        for i in items:
            if i >= 0:
                out.append(i)
            else:
                j = self.by_code.get(i)
                if j is not None:
                    out.append(j)
        return tuple(out)

    def counts(self) -> dict[str, int]:
        """Items per state, for the ``streamrec_catalogue_items`` gauge."""
        new_available = int(torch.isfinite(self.new_bias).sum())
        return {
            "trained_available": self.n_base - len(self.blocked) - len(self.excluded),
            "trained_unavailable": len(self.blocked),
            "trained_excluded": len(self.excluded),
            "new_available": new_available,
            "new_unavailable": len(self.new_ids) - new_available,
            "no_vector": len(self.unrepresented),
        }


# -- from a checkpoint (models.checkpoint.Checkpoint) to the catalogue's inputs ---------------------------

def _attribute_names(ckpt: Any) -> list[str] | None:
    """The attribute ids the checkpoint's network was trained with (None without attribute tables)."""
    return (ckpt.meta.get("attributes") or {}).get("names") if ckpt.network.attr_out is not None else None


def excluded_by(ckpt: Any, spec: str) -> tuple[list[int], list[str]]:
    """STREAMREC_MODEL__EXCLUDED_ATTRIBUTES as (trained items carrying one, the attribute ids); fails fast when
    the checkpoint has no attributes to match them against."""
    names = [a.strip() for a in spec.split(",") if a.strip()]
    if not names:
        return [], []
    known = _attribute_names(ckpt)
    if not known:
        raise ModelLoadError("STREAMREC_MODEL__EXCLUDED_ATTRIBUTES needs a checkpoint trained with "
                             "--item-attributes; this one has no attributes")
    index = {a: j for j, a in enumerate(known)}
    wanted = torch.tensor([index[a] for a in names if a in index], dtype=torch.long)
    if len(wanted) == 0:
        log.warning("none of STREAMREC_MODEL__EXCLUDED_ATTRIBUTES %s is an attribute of the model: only new "
                    "catalogue items can be excluded", names)
        return [], names
    pool = ckpt.network.attr_out
    hit = torch.isin(pool.flat, wanted)  # (L,) links to an excluded attribute
    return sorted(set(link_owners(pool.offsets)[hit].tolist())), names


def attributes_of(ckpt: Any, scale: float = 1.0) -> Any:
    """The network's attribute names and its new-item vector function (for the live catalogue), if it has them.

    The output vectors are scaled by ``scale`` (STREAMREC_MODEL__NEW_ITEM_SCALE): an attribute-only vector is
    close to the centre of its peers, which scores well against most sessions, so at full length new items
    crowd the lists (docs/input.md#catalogue has the measurement)."""
    names = _attribute_names(ckpt)
    if not names:
        return None

    def vectors(attributes: list[list[int]]) -> Any:
        out, inp, bias = ckpt.network.new_item_vectors(attributes)
        return out * scale, inp, bias

    pool = ckpt.network.attr_out
    return names, vectors, (pool.flat, pool.offsets)
