"""Top-k of the next item from output vectors: exact batched products (default) or an ANN index (faiss).

Both rankers answer one question: given query vectors ``q`` (B, H) (the
network's scored vector, ``SessionRNN.output_vector``), the top ``k`` items
by ``q . e_i + b_i`` with each row's excluded items (recent clicks) left out.
The bias is folded in as an extra dimension, so the ANN index does plain
maximum inner product search over ``[e_i, b_i]`` with queries ``[q, 1]``.

- :class:`ExactRanker`: exact; the products chunk by chunk and the top k by
  group maxima (one ``addmm`` (B, N) and one ``topk`` for small catalogues);
  fast enough up to a few hundred thousand items.
- :class:`AnnRanker`: a faiss IVF-Flat index (inner product); ``probes`` of
  ``lists`` cells are scanned per query. Built at start-up (about 20 s for 1M
  items on one core) or loaded from ``cache_dir`` (file name carries the model
  version and the list count). Recall@20 against exact is measured by
  ``streamrec bench`` (docs/performance.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Protocol, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from stream_app.settings import Settings

NEG_INF = float("-inf")


@dataclass(frozen=True, slots=True)
class TopK:
    """Per row: scores (descending) and item indices, excluded items already removed."""

    values: list[list[float]]
    indices: list[list[int]]


class Ranker(Protocol):
    """What the recommender needs: the best ``k`` items per query row."""

    name: str

    def top_k(self, queries: torch.Tensor, k: int, exclude: Sequence[Collection[int]]) -> TopK: ...

    def set_blocked(self, items: Collection[int], blocked: bool) -> None:
        """Switch items off (never returned) or back on: the live catalogue's unavailable items."""
        ...


def merge_top_k(base: TopK, extra_scores: torch.Tensor, offset: int, k: int,
                exclude: Sequence[Collection[int]]) -> TopK:
    """``base`` merged with the top of ``extra_scores`` (B, M), whose column j is item ``offset + j``.

    The live catalogue's new items are scored exactly beside the trained ones (a few
    hundred columns at most between retrainings); -inf columns (unavailable) and
    each row's excluded columns are left out."""
    extra = masked_top_k(extra_scores, k, exclude)
    values: list[list[float]] = []
    indices: list[list[int]] = []
    for bv, bi, ev, ei in zip(base.values, base.indices, extra.values, extra.indices):
        if not ev:
            values.append(bv)
            indices.append(bi)
            continue
        merged = sorted(zip(bv + ev, bi + [offset + j for j in ei]), key=lambda p: -p[0])[:k]
        values.append([v for v, _ in merged])
        indices.append([i for _, i in merged])
    return TopK(values, indices)


def item_matrix(out_emb: torch.Tensor, out_bias: torch.Tensor | None) -> np.ndarray:
    """[e_i, b_i] as a contiguous float32 (N, H+1) array (bias 0 when the model has none)."""
    emb = out_emb.detach().to(torch.float32).cpu()  # (N, H)
    bias = out_bias.detach().to(torch.float32).cpu() if out_bias is not None else torch.zeros(emb.shape[0])
    return np.ascontiguousarray(torch.cat([emb, bias[:, None]], dim=1).numpy())  # (N, H+1)


def query_matrix(queries: torch.Tensor) -> np.ndarray:
    """[q, 1] (B, H+1) float32."""
    q = queries.detach().to(torch.float32).cpu()  # (B, H)
    return np.ascontiguousarray(torch.cat([q, torch.ones(q.shape[0], 1)], dim=1).numpy())  # (B, H+1)


def masked_top_k(scores: torch.Tensor, k: int, exclude: Sequence[Collection[int]]) -> TopK:
    """Top ``k`` of full score rows (B, N) with excluded columns set to -inf (``scores`` is modified)."""
    rows: list[int] = []
    cols: list[int] = []
    for r, items in enumerate(exclude):
        rows.extend([r] * len(items))
        cols.extend(items)
    if rows:
        scores[rows, cols] = NEG_INF
    top = torch.topk(scores, min(k, scores.shape[1]), dim=1)  # (B, k)
    return without_masked_tail(top.values.tolist(), top.indices.tolist())


def without_masked_tail(values: list[list[float]], indices: list[list[int]]) -> TopK:
    """Rows that ran out of unmasked items (a tiny catalogue, heavy masking, padding) lose their -inf tail."""
    for r in range(len(values)):
        if values[r] and values[r][-1] == NEG_INF:
            keep = [j for j, v in enumerate(values[r]) if v != NEG_INF]
            values[r] = [values[r][j] for j in keep]
            indices[r] = [indices[r][j] for j in keep]
    return TopK(values, indices)


class ExactRanker:
    """Exact top-k by batched products; the default.

    Catalogues of at least ``4 * chunk`` items are scored chunk by chunk and the
    top k found by group maxima instead of a ``topk`` over every score (about 1.8x
    less time per click on 43k items, docs/performance.md): the items are cut into
    groups of ``group`` (item ``c*chunk + g*W + w`` is in group ``(c, w)``,
    ``W = chunk / group``), each group's maximum is one elementwise max of
    ``group`` slices, the top k groups by maximum are taken, and the top k of
    their ``k * group`` items is the answer. Exact, not approximate: an item of the
    true top k whose group were not among the top k groups would be beaten by
    the k larger group maxima, so by k other items. Excluded items are set to
    -inf before the maxima. Smaller catalogues take one product and one ``topk``
    (:meth:`full_top_k`, also the reference the benchmark checks the grouped
    answer against).
    """

    name = "exact"

    def __init__(self, out_emb: torch.Tensor, out_bias: torch.Tensor | None, contiguous_max: int = 64 << 20,
                 *, chunk: int = 2048, group: int = 16) -> None:
        self.emb_t = out_emb.detach().t()  # (H, N) view
        self.bias = out_bias.detach() if out_bias is not None else None  # (N,)
        self.n_items = int(out_emb.shape[0])
        self.chunk, self.group = chunk, group
        self._chunks: list[tuple[torch.Tensor, torch.Tensor]] = []
        if chunk > 0 and chunk % group == 0 and self.n_items >= 4 * chunk:  # chunk=0: always one product
            self._build_chunks()  # the blocks are the copy; full_top_k reads the parameter's view
        elif self.emb_t.numel() <= contiguous_max:
            # a contiguous (H, N) copy makes small batches up to 1.7x faster (one row: 0.33 vs 0.57 ms for 43k
            # items); skipped for huge tables, where it would double the memory
            self.emb_t = self.emb_t.contiguous()
        self._buffer = torch.empty(0)  # the scores of a batch, grown to the largest batch seen

    def _build_chunks(self) -> None:
        """(H, chunk) item blocks and their biases; the last one padded with zero vectors of bias -inf."""
        n, c = self.n_items, self.chunk
        pad = (-n) % c
        emb_t = torch.cat([self.emb_t, torch.zeros(self.emb_t.shape[0], pad, dtype=self.emb_t.dtype)], 1)
        bias = self.bias if self.bias is not None else torch.zeros(n, dtype=emb_t.dtype)
        bias = torch.cat([bias, torch.full((pad,), NEG_INF, dtype=emb_t.dtype)])
        self._chunks = [(emb_t[:, s : s + c].contiguous(), bias[s : s + c].contiguous()) for s in range(0, n + pad, c)]

    def set_blocked(self, items: Collection[int], blocked: bool) -> None:
        """Blocked items get bias -inf (in the chunks too), so neither path can return them."""
        if not items:
            return
        if not getattr(self, "_own_bias", False):  # a copy: the model's parameter stays as trained
            n = self.n_items
            self.bias = self.bias.clone() if self.bias is not None else torch.zeros(n, dtype=self.emb_t.dtype)
            self._bias0 = self.bias.clone()
            self._own_bias = True
        idx = torch.as_tensor(list(items), dtype=torch.long)
        new = torch.full((len(idx),), NEG_INF, dtype=self.bias.dtype) if blocked else self._bias0[idx]
        self.bias[idx] = new
        for j, i in enumerate(idx.tolist()):
            if self._chunks:
                self._chunks[i // self.chunk][1][i % self.chunk] = new[j]

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return queries @ self.emb_t  # (B, N)
        return torch.addmm(self.bias, queries, self.emb_t)  # (B, N)

    def full_top_k(self, queries: torch.Tensor, k: int, exclude: Sequence[Collection[int]]) -> TopK:
        """One (B, N) product and one ``topk``: the reference."""
        with torch.inference_mode():
            return masked_top_k(self.scores(queries), k, exclude)

    def top_k(self, queries: torch.Tensor, k: int, exclude: Sequence[Collection[int]]) -> TopK:
        if not self._chunks or k * self.group > self.n_items // 2:
            return self.full_top_k(queries, k, exclude)
        with torch.inference_mode():
            return self._grouped_top_k(queries, k, exclude)

    def _grouped_top_k(self, queries: torch.Tensor, k: int, exclude: Sequence[Collection[int]]) -> TopK:
        n_rows, n_chunks, c, g = queries.shape[0], len(self._chunks), self.chunk, self.group
        w = c // g
        size = n_chunks * n_rows * c
        if self._buffer.numel() < size or self._buffer.dtype != queries.dtype:
            self._buffer = torch.empty(size, dtype=queries.dtype)
        buf = self._buffer[:size].view(n_chunks, n_rows, c)
        for i, (emb_c, bias_c) in enumerate(self._chunks):  # (B, chunk) each, kept in cache
            torch.addmm(bias_c, queries, emb_c, out=buf[i])
        rows = [r for r, items in enumerate(exclude) for _ in items]
        if rows:
            cols = torch.tensor([i for items in exclude for i in items], dtype=torch.long)
            buf[cols // c, torch.tensor(rows), cols % c] = NEG_INF
        blocks = buf.view(n_chunks, n_rows, g, w)
        maxima = blocks.amax(2).permute(1, 0, 2).reshape(n_rows, n_chunks * w)  # (B, groups)
        best = torch.topk(maxima, k, dim=1).indices  # (B, k) group ids
        chunk_of, col_of = (best // w)[:, :, None], (best % w)[:, :, None]  # (B, k, 1)
        slot = torch.arange(g)[None, None, :]  # (1, 1, group)
        values = blocks[chunk_of, torch.arange(n_rows)[:, None, None], slot, col_of].reshape(n_rows, -1)  # (B, k*g)
        items = (chunk_of * c + slot * w + col_of).reshape(n_rows, -1)  # (B, k*g)
        top = torch.topk(values, k, dim=1)  # (B, k)
        return without_masked_tail(top.values.tolist(), torch.gather(items, 1, top.indices).tolist())


def default_lists(n_items: int) -> int:
    """IVF cells: about 4 sqrt(N) (4,096 for 1M items), at least 39 training points per cell."""
    return max(1, min(int(4 * math.sqrt(n_items)), n_items // 39))


class AnnRanker:
    """Approximate maximum inner product search with a faiss IVF-Flat index over [e_i, b_i]."""

    name = "ann"

    def __init__(
        self,
        out_emb: torch.Tensor,
        out_bias: torch.Tensor | None,
        *,
        lists: int = 0,
        probes: int = 32,
        threads: int = 1,
        cache_dir: Path | str | None = None,
        tag: str = "",
        seed: int = 1234,
    ) -> None:
        try:
            import faiss
        except ImportError as exc:  # optional dependency: pip install 'streamrec[ann]'
            raise RuntimeError("STREAMREC_MODEL__INDEX=ann needs faiss-cpu (pip install 'streamrec[ann]')") from exc
        self._faiss = faiss
        faiss.omp_set_num_threads(max(1, threads))
        items = item_matrix(out_emb, out_bias)  # (N, H+1)
        self.n_items, self.dim = items.shape
        self.lists = min(lists, self.n_items) if lists > 0 else default_lists(self.n_items)
        self.probes = max(1, min(probes, self.lists))
        path = Path(cache_dir) / f"ivf-{tag or 'model'}-{self.n_items}x{self.dim}-{self.lists}.faiss" \
            if cache_dir else None
        index = None
        if path is not None and path.is_file():
            index = faiss.read_index(str(path))
            if index.ntotal != self.n_items or index.d != self.dim:
                index = None
        if index is None:
            index = self._build(items, seed)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                faiss.write_index(index, str(tmp))
                tmp.replace(path)
        index.nprobe = self.probes
        self.index = index
        self.blocked: set[int] = set()

    def _build(self, items: np.ndarray, seed: int) -> object:
        faiss = self._faiss
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, self.lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        # k-means on a sample: 64 points per cell is plenty for the centroids
        sample = min(self.n_items, 64 * self.lists)
        rng = np.random.default_rng(seed)
        train = items if sample == self.n_items else items[np.sort(rng.choice(self.n_items, sample, replace=False))]
        index.train(train)
        index.add(items)
        return index

    def set_blocked(self, items: Collection[int], blocked: bool) -> None:
        """Blocked items are skipped like excluded ones (the search asks for that many more)."""
        if blocked:
            self.blocked.update(items)
        else:
            self.blocked.difference_update(items)

    def top_k(self, queries: torch.Tensor, k: int, exclude: Sequence[Collection[int]]) -> TopK:
        if self.blocked:
            exclude = [self.blocked.union(e) for e in exclude]
        extra = max((len(e) for e in exclude), default=0)
        want = min(self.n_items, k + extra)
        scores, ids = self.index.search(query_matrix(queries), want)  # (B, want), (B, want)
        values: list[list[float]] = []
        indices: list[list[int]] = []
        for row, (s_row, i_row) in enumerate(zip(scores.tolist(), ids.tolist())):
            skip = exclude[row]
            v_out: list[float] = []
            i_out: list[int] = []
            for s, i in zip(s_row, i_row):
                if i < 0 or i in skip:  # -1: fewer candidates than asked in the probed cells
                    continue
                v_out.append(s)
                i_out.append(i)
                if len(i_out) == k:
                    break
            values.append(v_out)
            indices.append(i_out)
        return TopK(values, indices)


def ranker_for(settings: "Settings", model: Any, model_version: str) -> Ranker:
    """The ranker STREAMREC_MODEL__INDEX asks for, over the model's output embeddings."""
    m = settings.model
    if m.index == "ann":
        return AnnRanker(model.out_emb, model.out_bias, lists=m.ann_lists, probes=m.ann_probes,
                         threads=settings.worker.torch_threads, cache_dir=m.ann_cache_dir or None, tag=model_version)
    return ExactRanker(model.out_emb, model.out_bias)


def recall_at_k(approx: Sequence[Sequence[int]], exact: Sequence[Sequence[int]], k: int = 20) -> float:
    """Mean |approx top-k ∩ exact top-k| / k over rows (the ANN quality the benchmark reports)."""
    if not exact:
        return 0.0
    hits = [len(set(a[:k]) & set(e[:k])) / max(1, min(k, len(e))) for a, e in zip(approx, exact)]
    return float(np.mean(hits))
