"""Fusion models over per-modality utterance features: ECMF and two baselines, registered in
`MODELS`.

Every model takes `(dims, num_classes, hidden, heads, layers, dropout, modality_dropout)` and maps
`feats[m]: [B, D_m]` with `masks[m]: bool [B]` (False: modality missing) to logits `[B, C]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ecmf.registry import Registry

if TYPE_CHECKING:
    from ecmf.config import TrainConfig

MODELS: Registry[type[nn.Module]] = Registry("fusion model")


def drop_modalities(mask: Tensor, p: float) -> Tensor:
    """Drop each present modality of each sample with probability `p`, keeping >= 1 per sample."""
    if p <= 0.0:
        return mask
    kept = mask & ~(torch.rand(mask.shape, device=mask.device) < p)
    lost = mask.any(1) & ~kept.any(1)
    # Rather than undo the whole draw (which would lower the drop rate of multimodal samples),
    # give such a sample back one of its present modalities, chosen at random. Computed for every
    # row: branching on `lost.any()` would cost a host-device sync per step on GPU.
    score = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)
    rescue = F.one_hot(score.argmax(1), mask.shape[1]).bool()
    return kept | (rescue & lost[:, None])


class FusionModel(nn.Module):
    """Input handling shared by the fusion models: order, checks, modality dropout, zeroing."""

    def __init__(self, dims: dict[str, int], num_classes: int, hidden: int = 128, heads: int = 4,
                 layers: int = 1, dropout: float = 0.3, modality_dropout: float = 0.0):
        super().__init__()
        if not dims:
            raise ValueError("fusion model: dims is empty; expected at least one modality")
        for name, d in dims.items():
            if not isinstance(d, int) or d <= 0:
                raise ValueError(f"fusion model: dims[{name!r}] = {d!r}; expected a positive int")
        checks = [(num_classes >= 1, "num_classes", ">= 1", num_classes),
                  (hidden >= 1, "hidden", ">= 1", hidden),
                  (heads >= 1, "heads", ">= 1", heads),
                  (layers >= 0, "layers", ">= 0", layers),
                  (0.0 <= dropout < 1.0, "dropout", "in [0, 1)", dropout),
                  (0.0 <= modality_dropout < 1.0, "modality_dropout", "in [0, 1)",
                   modality_dropout)]
        for ok, key, expected, value in checks:
            if not ok:
                raise ValueError(f"fusion model: {key} = {value!r}; expected {expected}")
        self.dims = dict(dims)
        self.modalities = list(dims)
        self.num_classes = num_classes
        self.modality_dropout = modality_dropout

    def forward(self, feats: dict[str, Tensor], masks: dict[str, Tensor] | None = None) -> Tensor:
        """Logits `[B, num_classes]`; `masks=None` means every modality is present."""
        xs, mask = self._inputs(feats, masks)
        if self.training:
            mask = drop_modalities(mask, self.modality_dropout)
        # A missing modality's vector is zeros by contract; enforcing it here (rather than trusting
        # the store) makes "missing" mean "cannot influence the output" for every model.
        xs = [torch.where(mask[:, i, None], x, torch.zeros_like(x)) for i, x in enumerate(xs)]
        return self.fuse(xs, mask)

    def fuse(self, xs: list[Tensor], mask: Tensor) -> Tensor:
        raise NotImplementedError

    def _inputs(self, feats, masks) -> tuple[list[Tensor], Tensor]:
        absent = [m for m in self.modalities if m not in feats]
        if absent:
            raise KeyError(f"fusion model: no features for {absent}; expected {self.modalities}")
        dtype = next(self.parameters()).dtype
        xs = []
        for m in self.modalities:
            x = torch.as_tensor(feats[m]).to(dtype)
            if x.ndim != 2 or x.shape[1] != self.dims[m]:
                raise ValueError(f"fusion model: feats[{m!r}] has shape {tuple(x.shape)}; "
                                 f"expected [batch, {self.dims[m]}]")
            xs.append(x)
        batch = xs[0].shape[0]
        if any(x.shape[0] != batch for x in xs):
            raise ValueError(f"fusion model: batch sizes differ across modalities: "
                             f"{ {m: x.shape[0] for m, x in zip(self.modalities, xs)} }")
        if masks is None:
            return xs, torch.ones(batch, len(xs), dtype=torch.bool, device=xs[0].device)
        absent = [m for m in self.modalities if m not in masks]
        if absent:
            raise KeyError(f"fusion model: no masks for {absent}; expected {self.modalities}")
        cols = []
        for m in self.modalities:
            k = torch.as_tensor(masks[m], device=xs[0].device).reshape(-1).bool()
            if k.shape[0] != batch:
                raise ValueError(f"fusion model: masks[{m!r}] has {k.shape[0]} entries; "
                                 f"expected {batch}")
            cols.append(k)
        return xs, torch.stack(cols, 1)


class _AttentionBlock(nn.Module):
    """Pre-norm self-attention across modality tokens, then a feed-forward, both residual."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * hidden, hidden), nn.Dropout(dropout))

    def forward(self, h: Tensor, key_padding_mask: Tensor) -> Tensor:
        q = self.norm1(h)
        a, _ = self.attn(q, q, q, key_padding_mask=key_padding_mask, need_weights=False)
        h = h + self.drop(a)
        return h + self.ffn(self.norm2(h))


@MODELS.register("ecmf")
class ECMFFusion(FusionModel):
    """ECMF fusion: modality tokens, self-attention across them, a residual path keeping the
    projected originals, masked mean pooling, classifier (our design of the unpublished details)."""

    def __init__(self, dims: dict[str, int], num_classes: int, hidden: int = 128, heads: int = 4,
                 layers: int = 1, dropout: float = 0.3, modality_dropout: float = 0.0):
        super().__init__(dims, num_classes, hidden, heads, layers, dropout, modality_dropout)
        if hidden % heads:
            raise ValueError(f"fusion model 'ecmf': hidden ({hidden}) must be a multiple of "
                             f"heads ({heads})")
        self.proj = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout))
            for d in dims.values())
        self.modality_embedding = nn.Parameter(torch.randn(len(dims), hidden) * 0.02)
        self.blocks = nn.ModuleList(_AttentionBlock(hidden, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        # Pooled vector for a sample with no modality at all: learned, so it predicts the prior.
        self.empty = nn.Parameter(torch.zeros(hidden))
        self.head = nn.Sequential(nn.LayerNorm(hidden), nn.Dropout(dropout),
                                  nn.Linear(hidden, num_classes))

    def fuse(self, xs: list[Tensor], mask: Tensor) -> Tensor:
        tokens = torch.stack([p(x) for p, x in zip(self.proj, xs)], 1) + self.modality_embedding
        present = mask.any(1)
        # A query with every key masked gives NaN; such samples attend over all (zero-feature)
        # tokens instead, and their outputs are replaced by `empty` below.
        ignore = ~mask & present[:, None]
        h = tokens
        for block in self.blocks:
            h = block(h, ignore)
        # The residual path: the attended tokens are added to the projected originals, so the
        # per-modality evidence survives however the attention reweights it.
        out = self.norm(h) + tokens
        w = mask.unsqueeze(-1).to(out.dtype)
        pooled = (out * w).sum(1) / w.sum(1).clamp(min=1.0)
        pooled = torch.where(present[:, None], pooled, self.empty.expand_as(pooled))
        return self.head(pooled)


def _mlp_encoder(d_in: int, hidden: int, dropout: float) -> nn.Sequential:
    # MERTools' MLPEncoder: dropout on the input, then three Linear + ReLU layers.
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(d_in, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())


@MODELS.register("mertools-attention")
class MERToolsAttention(FusionModel):
    """The MERTools baseline: MLP encoders, one learned weight per modality, weighted sum, head.

    `heads` and `layers` are accepted for the shared signature and unused."""

    def __init__(self, dims: dict[str, int], num_classes: int, hidden: int = 128, heads: int = 4,
                 layers: int = 1, dropout: float = 0.3, modality_dropout: float = 0.0):
        super().__init__(dims, num_classes, hidden, heads, layers, dropout, modality_dropout)
        self.encoders = nn.ModuleList(_mlp_encoder(d, hidden, dropout) for d in dims.values())
        self.attention_mlp = _mlp_encoder(hidden * len(dims), hidden, dropout)
        self.fc_att = nn.Linear(hidden, len(dims))
        self.head = nn.Linear(hidden, num_classes)

    def fuse(self, xs: list[Tensor], mask: Tensor) -> Tensor:
        hs = torch.stack([enc(x) for enc, x in zip(self.encoders, xs)], 1)  # [B, M, H]
        # The encoder of a zero vector is not zero (biases): clear missing hidden vectors so they
        # enter neither the weights' input nor the weighted sum.
        hs = hs.masked_fill(~mask.unsqueeze(-1), 0.0)
        scores = self.fc_att(self.attention_mlp(hs.flatten(1)))  # [B, M]
        present = mask.any(1, keepdim=True)
        scores = torch.where(present, scores.masked_fill(~mask, float("-inf")),
                             torch.zeros_like(scores))
        weights = torch.softmax(scores, 1) * mask  # all-missing rows: zero weights, zero vector
        return self.head((weights.unsqueeze(-1) * hs).sum(1))


@MODELS.register("concat-mlp")
class ConcatMLP(FusionModel):
    """Early fusion: masked features and mask indicators concatenated, then an MLP.

    `heads` and `layers` are accepted for the shared signature and unused."""

    def __init__(self, dims: dict[str, int], num_classes: int, hidden: int = 128, heads: int = 4,
                 layers: int = 1, dropout: float = 0.3, modality_dropout: float = 0.0):
        super().__init__(dims, num_classes, hidden, heads, layers, dropout, modality_dropout)
        width = sum(dims.values()) + len(dims)
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))

    def fuse(self, xs: list[Tensor], mask: Tensor) -> Tensor:
        return self.net(torch.cat([*xs, mask.to(xs[0].dtype)], 1))


def build_model(cfg: TrainConfig, dims: dict[str, int], num_classes: int) -> FusionModel:
    """The fusion model named by `cfg.model`, sized by `cfg`; unknown names list the available."""
    return MODELS.get(cfg.model)(dims, num_classes, hidden=cfg.hidden, heads=cfg.heads,
                                 layers=cfg.layers, dropout=cfg.dropout,
                                 modality_dropout=cfg.modality_dropout)
