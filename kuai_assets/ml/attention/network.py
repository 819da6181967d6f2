"""The network: DIN-style target attention of the candidate photo over the user's history.

    item(photo)   = MLP([standardised dense content, cluster embeddings per k, mean word embedding])
    key_i         = item(history photo i) + click embedding (clicked / not clicked)
    weight_i      = softmax over the real items of MLP([q, k_i, q - k_i, q * k_i]), q = item(candidate)
    logit         = MLP([q, sum_i weight_i key_i, mean_i key_i, history size, history click rate,
                         the user's earlier rows and click rate (all of them, not only the
                         history's), user embedding, standardised context])
                    + <taste(user), W q>   (when taste_dim > 0)

The taste term is a factorization of user x photo content: the user's factors are learnt from
every fit row of the user, where the attention sees only the latest `history_length`; the
photo's side is a projection of its content vector, so unseen photos get it too.

Normalised (softmax) weights: the pooled vector is a weighted mean, so its scale does not grow
with the history's length; the length itself is an input. Standardisation statistics (of the
photo content and of the context columns) are buffers of the module, so it takes raw values.
`PackedClickModel` wraps it for MLflow: one float32 matrix in, the click probability out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class NetworkShape:
    dense: int  # photo content columns
    cluster_ks: tuple[int, ...]
    words_per_photo: int
    word_buckets: int
    users: int  # user indices 1..users; 0 = unknown
    context: int
    history_length: int
    item_dim: int = 32
    cluster_dim: int = 8
    word_dim: int = 8
    user_dim: int = 8
    attention_hidden: int = 32
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    taste_dim: int = 0  # width of the user-taste factors (0: no taste term)

    def as_dict(self) -> dict:
        return asdict(self)


def _standardiser(values: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per column: whether to take log1p (non-negative and heavy-tailed), then mean and std of its
    finite values (in float64). One column at a time: a float64 copy of a column, never of the
    whole matrix (hundreds of MB at the real sizes)."""
    values = np.asarray(values)
    n_columns = values.shape[1]
    log = np.zeros(n_columns, dtype=bool)
    mean, std = np.zeros(n_columns), np.ones(n_columns)
    for j in range(n_columns):
        column = values[:, j].astype(np.float64)
        column = column[np.isfinite(column)]
        if not len(column):
            continue
        log[j] = column.min() >= 0 and column.max() > 100  # only columns spanning orders of magnitude
        if log[j]:
            column = np.log1p(column)
        mean[j], std[j] = column.mean(), column.std()
    std = np.where(std > 1e-6, std, 1.0)
    return (torch.tensor(log, dtype=torch.bool), torch.tensor(mean, dtype=torch.float32),
            torch.tensor(std, dtype=torch.float32))


class Standardise(nn.Module):
    """log1p where chosen, then (x - mean) / std; NaN becomes 0 plus a missing indicator."""

    def __init__(self, values: np.ndarray):
        super().__init__()
        log, mean, std = _standardiser(values)
        self.register_buffer("log", log)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    @property
    def width(self) -> int:
        return 2 * len(self.mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        missing = torch.isnan(x)
        x = torch.where(self.log, torch.log1p(torch.clamp(x, min=0)), x)
        x = torch.nan_to_num((x - self.mean) / self.std, nan=0.0, posinf=0.0, neginf=0.0).clamp(-10, 10)
        return torch.cat([x, missing.to(x.dtype)], dim=-1)


def lookup(weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The rows `index` of an embedding table, as nn.Embedding's forward gives them, by
    index_select: on the CPU its backward (an index_add) takes a third to a half of the
    embedding's dense backward for these tables (tens of rows to 32,769, ~10,000 lookups)."""
    return weight.index_select(0, index.reshape(-1)).reshape(*index.shape, weight.shape[1])


class ItemEncoder(nn.Module):
    """Photo content to a vector. The dense content is standardised with statistics over every
    photo (buffers), folded into the first layer's weights so no per-item arithmetic is spent."""

    def __init__(self, shape: NetworkShape, photo_dense: np.ndarray):
        super().__init__()
        values = np.asarray(photo_dense)
        mean, std = np.zeros(values.shape[1]), np.ones(values.shape[1])
        for j in range(values.shape[1] if len(values) else 0):  # a float64 copy of one column at a time
            column = values[:, j].astype(np.float64)
            mean[j], std[j] = column.mean(), column.std()
        self.register_buffer("dense_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("dense_std", torch.tensor(np.where(std > 1e-6, std, 1.0), dtype=torch.float32))
        self.clusters = nn.ModuleList(nn.Embedding(k + 1, shape.cluster_dim) for k in shape.cluster_ks)
        self.words = nn.Embedding(shape.word_buckets + 1, shape.word_dim, padding_idx=0)
        self.dense = nn.Linear(shape.dense, shape.item_dim)
        self.embedded = nn.Linear(len(shape.cluster_ks) * shape.cluster_dim + shape.word_dim, shape.item_dim, bias=False)
        self.out = nn.Linear(shape.item_dim, shape.item_dim)

    def forward(self, dense: torch.Tensor, clusters: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        weight = self.dense.weight / self.dense_std
        hidden = nn.functional.linear(dense, weight, self.dense.bias - weight @ self.dense_mean)
        parts = [lookup(embedding.weight, clusters[..., i]) for i, embedding in enumerate(self.clusters)]
        present = (words > 0).sum(-1, keepdim=True).clamp(min=1).to(dense.dtype)
        # bucket 0 (no word) reads a zero row and passes no gradient: the words table's padding row
        table = torch.cat([self.words.weight.new_zeros(1, self.words.weight.shape[1]), self.words.weight[1:]])
        parts.append(lookup(table, words).sum(-2) / present)  # the mean of the present words
        return self.out(torch.relu(hidden + self.embedded(torch.cat(parts, dim=-1))))


class TargetAttention(nn.Module):
    """DIN's activation unit: a score per history item from an MLP over [q, k, q - k, q * k],
    softmax over the real items (an empty history pools to zeros). The first layer is applied
    as (A + C) q + [(B - C) + D diag(q)] k, the same linear map without building the 4d input:
    one batched product per target over its keys, no (targets, length, dim) temporaries."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.first = nn.Linear(4 * dim, hidden)
        self.activation = nn.PReLU()
        self.last = nn.Linear(hidden, 1)
        self.dim = dim

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b, c, d = self.first.weight.split(self.dim, dim=1)
        per_query = nn.functional.linear(query, a + c, self.first.bias).unsqueeze(1)  # (targets, 1, hidden)
        per_key = (b - c).t().unsqueeze(0) + query.unsqueeze(-1) * d.t().unsqueeze(0)  # (targets, dim, hidden)
        hidden = torch.baddbmm(per_query, keys, per_key)  # (targets, length, hidden)
        score = self.last(self.activation(hidden)).squeeze(-1)
        weight = torch.softmax(score.masked_fill(~mask, -1e9), dim=-1) * mask.to(score.dtype)
        return torch.bmm(weight.unsqueeze(1), keys).squeeze(1), weight


class AttentionClickModel(nn.Module):
    """forward(batch) -> click logits, batch being the dict `make_batch` builds."""

    def __init__(self, shape: NetworkShape, photo_dense: np.ndarray, context: np.ndarray):
        super().__init__()
        self.shape = shape
        self.item = ItemEncoder(shape, photo_dense)
        self.click = nn.Embedding(2, shape.item_dim)
        self.attention = TargetAttention(shape.item_dim, shape.attention_hidden)
        self.user = nn.Embedding(shape.users + 1, shape.user_dim)
        self.context = Standardise(context)
        width = 3 * shape.item_dim + 4 + shape.user_dim + self.context.width
        layers: list[nn.Module] = []
        for size in shape.hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(shape.dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*layers)
        if shape.taste_dim:  # logit += <taste(user), taste_item(q)>: the user's taste over every fit row
            self.taste = nn.Embedding(shape.users + 1, shape.taste_dim)
            nn.init.normal_(self.taste.weight, std=0.01)
            self.taste_item = nn.Linear(shape.item_dim, shape.taste_dim, bias=False)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
        """`batch`: the candidates' content (dense, clusters, words: one row per target), the
        distinct history items' content and click (history_dense, history_clusters,
        history_words, history_click: one row per item), history_index (targets, length) into
        those items, mask (targets, length) of real items, user and context per target.
        `generator` draws the training's dropout masks (torch's global generator when None): a
        generator of its own per thread keeps concurrent shards of one step deterministic."""
        targets = len(batch["dense"])
        encoded = self.item(*(torch.cat([batch[name], batch[f"history_{name}"]]) for name in ("dense", "clusters", "words")))
        query, items = encoded[:targets], encoded[targets:] + lookup(self.click.weight, batch["history_click"])  # one pass for both
        keys = items[batch["history_index"]]  # each distinct item is encoded once
        mask = batch["mask"]
        pooled, _ = self.attention(query, keys, mask)
        real = mask.to(keys.dtype)
        count = real.sum(1, keepdim=True)
        mean = torch.bmm(real.unsqueeze(1), keys).squeeze(1) / count.clamp(min=1)
        clicks = batch["history_click"][batch["history_index"]].to(keys.dtype)
        click_rate = (clicks * real).sum(1, keepdim=True) / count.clamp(min=1)
        size = torch.log1p(count) / math.log1p(self.shape.history_length)
        earlier_rows, earlier_clicks = batch["earlier"][:, :1], batch["earlier"][:, 1:]
        earlier = torch.cat([torch.log1p(earlier_rows) / 10, (earlier_clicks + 2) / (earlier_rows + 10)], -1)
        features = torch.cat([query, pooled, mean, size, click_rate, earlier, lookup(self.user.weight, batch["user"]),
                              self.context(batch["context"])], -1)
        logit = self._head(features, generator).squeeze(-1)
        if self.shape.taste_dim:
            logit = logit + (lookup(self.taste.weight, batch["user"]) * self.taste_item(query)).sum(-1)
        return logit

    def _head(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The click tower, its dropout drawn from `generator` (inverted dropout, as nn.Dropout)."""
        for layer in self.head:
            if isinstance(layer, nn.Dropout):
                if self.training and layer.p > 0:
                    keep = torch.empty_like(x).bernoulli_(1 - layer.p, generator=generator)
                    x = x * keep / (1 - layer.p)
            else:
                x = layer(x)
        return x


# -- one float matrix in, probabilities out (for MLflow) ------------------------------------------


def packed_layout(shape: NetworkShape) -> list[tuple[str, int]]:
    """The column blocks of a packed row, in order: (name, width)."""
    item = shape.dense + len(shape.cluster_ks) + shape.words_per_photo
    return [
        ("candidate", item),
        ("history", shape.history_length * (item + 2)),  # per item: content, click, present
        ("user", 1),
        ("earlier", 2),  # the user's earlier fit rows and their clicks
        ("context", shape.context),
    ]


class PackedClickModel(nn.Module):
    """The model on one float32 matrix, a row per impression (see `packed_layout`); returns the
    click probability. Cluster ids, word buckets and the user index travel as exact floats."""

    def __init__(self, model: AttentionClickModel):
        super().__init__()
        self.model = model

    def unpack(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        shape = self.model.shape
        d, c, w, length = shape.dense, len(shape.cluster_ks), shape.words_per_photo, shape.history_length
        item = d + c + w
        batch = {}
        candidate = x[:, :item]
        history = x[:, item : item + length * (item + 2)].reshape(-1, length, item + 2)
        rest = item + length * (item + 2)
        batch["dense"], batch["clusters"], batch["words"] = candidate[:, :d], candidate[:, d : d + c].long(), candidate[:, d + c :].long()
        flat = history.reshape(-1, item + 2)
        batch["history_dense"] = flat[:, :d]
        batch["history_clusters"] = flat[:, d : d + c].long()
        batch["history_words"] = flat[:, d + c : item].long()
        batch["history_click"] = flat[:, item].long()
        batch["history_index"] = torch.arange(len(flat), device=x.device).reshape(-1, length)
        batch["mask"] = history[..., item + 1] > 0.5
        batch["user"] = x[:, rest].long()
        batch["earlier"] = x[:, rest + 1 : rest + 3]
        batch["context"] = x[:, rest + 3 :]
        return batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(self.unpack(x)))


def pack(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The packed float32 rows of a batch (the inverse of PackedClickModel.unpack)."""
    f = torch.float32
    index = batch["history_index"]
    candidate = torch.cat([batch["dense"], batch["clusters"].to(f), batch["words"].to(f)], -1)
    history = torch.cat(
        [batch["history_dense"][index], batch["history_clusters"][index].to(f), batch["history_words"][index].to(f),
         batch["history_click"][index].to(f).unsqueeze(-1), batch["mask"].to(f).unsqueeze(-1)], -1,
    )
    return torch.cat([candidate, history.flatten(1), batch["user"].to(f).unsqueeze(-1), batch["earlier"], batch["context"]], -1)
