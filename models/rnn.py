"""Session recurrent network (GRU4Rec-style), readable top to bottom.

Why it is written out by hand instead of wrapping ``nn.GRU``:
the stream worker needs a *pure* single-click ``step`` over a flat state, and
the trainer needs to feed the first layer with rows gathered from a large item
table (so that only the rows touched in a mini-batch are updated).  Writing
the three cell types as plain tensor maths gives both with one code path, so
``step`` and ``forward_sequence`` cannot drift apart.

Shapes: B = batch, T = time, N = number of items, H = hidden units of a layer,
E = width of the input item vector, G = gates per cell (GRU 3, LSTM 4, RNN 1),
S = ``state_size`` (sum of H over layers, twice for LSTM because of c).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from models.features import AttributePool, ItemAttributes, link_owners

CELLS: dict[str, int] = {"gru": 3, "lstm": 4, "rnn": 1}


@dataclass
class ModelConfig:
    """Everything needed to rebuild the network; stored in the checkpoint as a dict.

    ``embedding=0`` means "one-hot equivalent": each item owns a row of the
    first layer's input-to-gates matrix directly (no separate embedding), the
    setting GRU4Rec reports as best on some data.  ``constrained=True`` ties
    the input embedding to the output item embedding (width = last hidden).
    """

    n_items: int
    hidden: int = 100
    layers: int = 1
    cell: str = "gru"
    embedding: int = 0
    constrained: bool = False
    output_bias: bool = True
    dropout_emb: float = 0.0
    dropout_hidden: float = 0.0
    elu: float = 0.0  # >0: ELU(alpha=elu) on the final hidden output before scoring
    attributes: int = 0  # attribute ids known to the network (0: items are ids only)
    attribute_links: int = 0  # (item, attribute) pairs, the size of the CSR list (models/features.py)
    attribute_pooling: str = "mean"  # how an item's attributes are weighed: mean or idf (models/features.py)
    user_hidden: int = 0  # >0: a user-level GRU of this width carries users across sessions (models/users.py)
    profile_attributes: int = 0  # user profile attribute ids known to the network (0: no profile fusion)

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise ValueError(f"unknown cell {self.cell!r}; expected one of {sorted(CELLS)}")
        if self.n_items < 1 or self.hidden < 1 or self.layers < 1 or self.embedding < 0:
            raise ValueError(f"invalid model sizes in {self}")
        if self.attributes < 0 or self.attribute_links < 0 or (self.attributes > 0) != (self.attribute_links > 0):
            raise ValueError(f"invalid attribute sizes in {self}")
        if self.user_hidden < 0 or self.profile_attributes < 0:
            raise ValueError(f"invalid user sizes in {self}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-able) for checkpoints."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Rebuild from ``to_dict``; unknown keys are an error so stale files fail loudly."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        return cls(**d)


def _uniform_(t: Tensor, fan_in: int, fan_out: int) -> None:
    """Glorot-uniform init, the scale GRU4Rec uses for every weight matrix."""
    s = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        t.uniform_(-s, s)


class RecurrentLayer(nn.Module):
    """One GRU / LSTM / plain-RNN layer in PyTorch's gate order.

    ``w_ih`` is None for a first layer in one-hot mode: its input already *is*
    the gate pre-activation (a row of the item table).
    """

    def __init__(self, cell: str, n_in: int | None, hidden: int) -> None:
        super().__init__()
        self.cell = cell
        self.hidden = hidden
        g = CELLS[cell] * hidden
        self.w_ih = nn.Parameter(torch.empty(g, n_in)) if n_in is not None else None  # (G*H, E)
        self.w_hh = nn.Parameter(torch.empty(g, hidden))  # (G*H, H)
        self.b_ih = nn.Parameter(torch.zeros(g))  # (G*H,)
        self.b_hh = nn.Parameter(torch.zeros(g))  # (G*H,)
        if self.w_ih is not None:
            for k in range(CELLS[cell]):
                _uniform_(self.w_ih.data[k * hidden:(k + 1) * hidden], n_in, hidden)  # type: ignore[arg-type]
        for k in range(CELLS[cell]):
            _uniform_(self.w_hh.data[k * hidden:(k + 1) * hidden], hidden, hidden)
        if cell == "lstm":  # forget-gate bias 1: the usual trick for stable early training
            with torch.no_grad():
                self.b_ih[hidden:2 * hidden].fill_(1.0)

    @property
    def state_size(self) -> int:
        """Floats of recurrent state this layer keeps (LSTM keeps h and c)."""
        return 2 * self.hidden if self.cell == "lstm" else self.hidden

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Advance one click. Returns (new layer state (B, S_l), output h (B, H)); inputs untouched."""
        H = self.hidden
        gx = x if self.w_ih is None else x @ self.w_ih.t()  # (B, G*H)
        if self.cell == "gru":
            h = state  # (B, H)
            gh = torch.addmm(self.b_hh, h, self.w_hh.t())  # (B, 3H)
            gx = gx + self.b_ih  # (B, 3H)
            r = torch.sigmoid(gx[:, :H] + gh[:, :H])  # (B, H)
            z = torch.sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])  # (B, H)
            n = torch.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])  # (B, H)
            h_new = n + z * (h - n)  # (B, H)  == (1-z)*n + z*h
            return h_new, h_new
        if self.cell == "lstm":
            h, c = state[:, :H], state[:, H:]  # (B, H), (B, H)
            g = gx + self.b_ih + torch.addmm(self.b_hh, h, self.w_hh.t())  # (B, 4H)
            i = torch.sigmoid(g[:, :H])  # (B, H)
            f = torch.sigmoid(g[:, H:2 * H])  # (B, H)
            cc = torch.tanh(g[:, 2 * H:3 * H])  # (B, H)
            o = torch.sigmoid(g[:, 3 * H:])  # (B, H)
            c_new = f * c + i * cc  # (B, H)
            h_new = o * torch.tanh(c_new)  # (B, H)
            return torch.cat([h_new, c_new], dim=1), h_new  # (B, 2H), (B, H)
        h_new = torch.tanh(gx + self.b_ih + torch.addmm(self.b_hh, state, self.w_hh.t()))  # (B, H)
        return h_new, h_new


class SessionRNN(nn.Module):
    """Item -> input vector -> recurrent layers -> scores against output item embeddings."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        g0 = CELLS[c.cell] * c.hidden
        # Output item embedding (N, H) and bias (N,): the big tables, trained sparsely.
        self.out_emb = nn.Parameter(torch.empty(c.n_items, c.hidden))  # (N, H)
        _uniform_(self.out_emb, c.n_items, c.hidden)
        self.out_bias = nn.Parameter(torch.zeros(c.n_items)) if c.output_bias else None  # (N,)
        # Input table: none when tied to the output, (N, E) with an embedding, (N, G*H) one-hot-like.
        if c.constrained:
            self.in_emb = None
            n_in: int | None = c.hidden
        elif c.embedding > 0:
            self.in_emb = nn.Parameter(torch.empty(c.n_items, c.embedding))  # (N, E)
            _uniform_(self.in_emb, c.n_items, c.embedding)
            n_in = c.embedding
        else:
            self.in_emb = nn.Parameter(torch.empty(c.n_items, g0))  # (N, G*H)
            _uniform_(self.in_emb, c.n_items, g0)
            n_in = None
        self.layers = nn.ModuleList(
            [RecurrentLayer(c.cell, n_in if i == 0 else c.hidden, c.hidden) for i in range(c.layers)]
        )
        self.drop_emb = nn.Dropout(c.dropout_emb)
        self.drop_hidden = nn.Dropout(c.dropout_hidden)
        # Attributes: pooled vectors added to the id rows, output side (H) and, when the input table is
        # its own, input side (its width); a constrained network uses the output pool on both sides.
        self.attr_out: AttributePool | None = None
        self.attr_in: AttributePool | None = None
        if c.attributes > 0:
            self.attr_out = AttributePool(c.attributes, c.attribute_links, c.n_items, c.hidden)
            if self.in_emb is not None:
                self.attr_in = AttributePool(c.attributes, c.attribute_links, c.n_items, int(self.in_emb.shape[1]))
        # Long-term users (HRNN, Quadrana et al. 2017): a GRU stepped once per finished session on that
        # session's final state, whose output initialises the next session (HRNN-init: adding its projection
        # to every query as well overfitted on MovieLens-100k, docs/quality.md); profile attributes (index 0
        # is padding) pooled into a vector added to the scored query, so a changed profile counts from the
        # next click.
        self.user_cell = RecurrentLayer("gru", self.state_size, c.user_hidden) if c.user_hidden > 0 else None
        self.user_init = nn.Linear(c.user_hidden, self.state_size) if c.user_hidden > 0 else None
        self.profile = (nn.EmbeddingBag(c.profile_attributes + 1, c.hidden, mode="mean", padding_idx=0)
                        if c.profile_attributes > 0 else None)
        if self.profile is not None:
            with torch.no_grad():
                self.profile.weight.zero_()  # a profile starts as no change to the session's query

    # ----------------------------------------------------------------- state
    @property
    def state_size(self) -> int:
        """Floats in the flat per-session state: layers' states concatenated."""
        return sum(layer.state_size for layer in self.layers)

    def zero_state(self, batch: int) -> Tensor:
        """Fresh session state (B, S) of float32 zeros."""
        return torch.zeros(batch, self.state_size, dtype=torch.float32, device=self.out_emb.device)

    def zero_user(self, batch: int) -> Tensor:
        """A user with no finished session yet: (B, U) zeros (U = 0 without the user-level GRU)."""
        return torch.zeros(batch, self.config.user_hidden, dtype=torch.float32, device=self.out_emb.device)

    def user_step(self, user: Tensor, session: Tensor) -> Tensor:
        """Fold a finished session's final state (B, S) into the user state (B, U). Pure."""
        if self.user_cell is None:
            return user
        return self.user_cell(session, user)[0]  # (B, U)

    def session_start(self, user: Tensor) -> Tensor:
        """The first state (B, S) of a user's next session: tanh(W u + b), zeros without the user-level GRU."""
        if self.user_init is None:
            return self.zero_state(user.shape[0])
        return torch.tanh(self.user_init(user))  # (B, S)

    def user_vector(self, user: Tensor, profile: Tensor | None) -> Tensor | None:
        """What the user adds to each scored query (B, H): the pooled profile of padded attribute indices
        (B, L) (0 = none); None without profile fusion or a profile. ``user`` (B, U) is taken so that a
        user-state term can join without changing callers."""
        if self.profile is None or profile is None or profile.shape[1] == 0:
            return None
        return self.profile(profile)  # (B, H)

    # ----------------------------------------------------------------- pieces
    def input_table(self) -> Tensor:
        """The (N, E) id table whose rows feed the first layer (the output table when constrained)."""
        return self.out_emb if self.in_emb is None else self.in_emb

    def load_attributes(self, attrs: ItemAttributes) -> None:
        """Give the attribute pools their item -> attribute lists (coded for this network's items)."""
        for pool in (self.attr_out, self.attr_in):
            if pool is not None:
                pool.load_attributes(attrs, self.config.attribute_pooling)

    def input_pool(self) -> AttributePool | None:
        """The attribute pool of the input side (the output pool when the tables are shared)."""
        return self.attr_out if self.in_emb is None else self.attr_in

    def input_vectors(self, items: Tensor) -> Tensor:
        """First-layer inputs (..., E) of item indices (...): id row plus pooled attributes."""
        x = self.input_table()[items]  # (..., E)
        pool = self.input_pool()
        if pool is None:
            return x
        return x + pool(items.reshape(-1)).reshape(x.shape)  # (..., E)

    def output_table(self) -> Tensor:
        """Output item vectors (N, H): id rows plus pooled attributes (computed, not cached)."""
        return self.out_emb if self.attr_out is None else self.out_emb + self.attr_out.all()  # (N, H)

    def new_item_vectors(self, attributes: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
        """Output (M, H), input (M, E) vectors and output biases (M,) of items outside the training
        catalogue, from their attribute indices alone: what an unseen item's zero id row plus its
        pooled attributes give, and the mean bias of the trained items that share its attributes.

        The bias matters: trained items' biases are mostly negative, so a new item at bias 0
        outranks its peers (in the demo, 2026-12-03: a new movie in 37 % of the lists after it was
        added; online Recall@20 0.206 with the 343 untrained movies at bias 0, 0.217 with the
        peer bias, both at full vector length; the scale applied on top is in
        stream_app/core/catalogue.py's ``attributes_of``). The live catalogue (stream_app/core/catalogue.py) makes a
        product added after training recommendable with these; a network without attributes
        cannot (ValueError)."""
        if self.attr_out is None:
            raise ValueError("this network has no attribute tables")
        lengths = torch.tensor([len(a) for a in attributes], dtype=torch.int64)  # (M,)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])  # (M+1,)
        flat = torch.tensor([j for a in attributes for j in a], dtype=torch.int64)  # (T,)
        pooling = self.config.attribute_pooling
        with torch.no_grad():
            out = self.attr_out.pool_new(flat, offsets, pooling)  # (M, H)
            pool = self.input_pool()
            inp = pool.pool_new(flat, offsets, pooling) if pool is not None else out  # (M, E)
            peers = self._attribute_bias()[flat]  # (T,) each attribute's mean trained bias
            bias = torch.zeros(len(lengths)).index_add_(0, link_owners(offsets), peers) / lengths.clamp(min=1)  # (M,)
        return out, inp, bias

    def _attribute_bias(self) -> Tensor:
        """Per attribute (A,): the mean output bias of the trained items carrying it (the global mean for none)."""
        pool = self.attr_out
        assert pool is not None
        n_attr = int(pool.weight.shape[0])
        if self.out_bias is None:
            return torch.zeros(n_attr)
        b = self.out_bias.detach()  # (N,)
        total = torch.zeros(n_attr).index_add_(0, pool.flat, b[link_owners(pool.offsets)])  # (A,)
        n = pool.attribute_counts().to(total.dtype)  # (A,)
        return torch.where(n > 0, total / n.clamp(min=1), b.mean())

    def folded(self) -> "SessionRNN":
        """An attribute-free copy with the pooled parts added into its tables: same outputs, plain serving.

        The worker, the evaluation and the rankers all read ``out_emb`` and
        ``input_table()``; folding once at load time keeps attribute pooling
        off every hot path.
        """
        if self.attr_out is None:
            return self
        cfg = ModelConfig.from_dict({**self.config.to_dict(), "attributes": 0, "attribute_links": 0,
                                     "attribute_pooling": "mean"})
        plain = SessionRNN(cfg)
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(("attr_out.", "attr_in."))}
        with torch.no_grad():
            state["out_emb"] = self.output_table().detach().clone()  # (N, H)
            if self.in_emb is not None and self.attr_in is not None:
                state["in_emb"] = (self.in_emb + self.attr_in.all()).detach().clone()  # (N, E)
        plain.load_state_dict(state, strict=True)
        plain.train(self.training)
        return plain

    def advance(self, state: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Run all layers for one click from input vectors x (B, E). Returns (state (B,S), top h (B,H)).

        Dropout between layers applies to the layer *outputs* only; the kept
        recurrent state is never dropped, so eval/train states mean the same.
        """
        new_parts: list[Tensor] = []
        offset = 0
        h = x  # (B, E)
        for i, layer in enumerate(self.layers):
            s_l = state[:, offset:offset + layer.state_size]  # (B, S_l)
            offset += layer.state_size
            s_new, h = layer(h if i == 0 else self.drop_hidden(h), s_l)  # (B, S_l), (B, H)
            new_parts.append(s_new)
        new_state = new_parts[0] if len(new_parts) == 1 else torch.cat(new_parts, dim=1)  # (B, S)
        return new_state, h

    def output_vector(self, state: Tensor) -> Tensor:
        """Top-layer h of a state (B, S) -> the (B, H) vector that is scored (ELU if configured)."""
        last = self.layers[-1]
        start = self.state_size - last.state_size
        h = state[:, start:start + last.hidden]  # (B, H)
        return self.final(h)

    def final(self, h: Tensor) -> Tensor:
        """Optional ELU on the scored vector; linear by default (GRU4Rec's best setting)."""
        return nn.functional.elu(h, alpha=self.config.elu) if self.config.elu > 0 else h  # (B, H)

    # ----------------------------------------------------------------- public API
    def score(self, state: Tensor, profile: Tensor | None = None) -> Tensor:
        """Scores (B, N) of every item as the next click given states (B, S) and ``user_vector`` (B, H)."""
        h = self.output_vector(state)  # (B, H)
        if profile is not None:
            h = h + profile  # (B, H)
        table = self.output_table()  # (N, H)
        if self.out_bias is None:
            return h @ table.t()  # (B, N)
        return torch.addmm(self.out_bias, h, table.t())  # (B, N)

    def step(self, state: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """One click per row: (state (B,S), items (B,)) -> (new state (B,S), next-item scores (B,N)). Pure."""
        x = self.drop_emb(self.input_vectors(items))  # (B, E)
        new_state, h = self.advance(state, x)  # (B, S), (B, H)
        h = self.final(self.drop_hidden(h))  # (B, H)
        table = self.output_table()  # (N, H)
        scores = h @ table.t() if self.out_bias is None else torch.addmm(self.out_bias, h, table.t())  # (B, N)
        return new_state, scores

    def forward_sequence(self, items: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Whole sequences (T, B) -> (states (T, B, S), scores (T, B, N)); state defaults to zeros."""
        T, B = items.shape
        s = self.zero_state(B) if state is None else state  # (B, S)
        xs = self.drop_emb(self.input_vectors(items))  # (T, B, E)
        states: list[Tensor] = []
        outs: list[Tensor] = []
        for t in range(T):
            s, h = self.advance(s, xs[t])  # (B, S), (B, H)
            states.append(s)
            outs.append(h)
        hs = self.final(self.drop_hidden(torch.stack(outs)))  # (T, B, H)
        scores = hs @ self.output_table().t()  # (T, B, N)
        if self.out_bias is not None:
            scores = scores + self.out_bias  # (T, B, N)
        return torch.stack(states), scores

    def forward(self, items: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Alias of ``forward_sequence`` so the module is callable."""
        return self.forward_sequence(items, state)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The per-item tables (updated row-wise in training; the small attribute tables are dense)."""
        out = [self.out_emb]
        if self.out_bias is not None:
            out.append(self.out_bias)
        if self.in_emb is not None:
            out.append(self.in_emb)
        return out

    def dense_parameters(self) -> list[nn.Parameter]:
        """Everything else (recurrent weights and biases)."""
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]


def build_model(config: ModelConfig, seed: int | None = None) -> SessionRNN:
    """Construct a model, seeding the init when asked (reproducible training)."""
    if seed is not None:
        torch.manual_seed(seed)
    return SessionRNN(config)


__all__ = ["CELLS", "ModelConfig", "RecurrentLayer", "SessionRNN", "build_model"]
