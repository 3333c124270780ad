"""TransMIL-style WSI-only baseline (Shao et al., NeurIPS 2021), classification.

Patch features -> Linear(d, 512) + ReLU -> sequence padded to a square (``ceil(sqrt(n))^2`` tokens,
by repeating the first patches) -> class token -> Nystrom transformer layer -> PPEG (depthwise
7/5/3 convolutions over the square token grid) -> Nystrom transformer layer -> LayerNorm -> class
token -> linear head. The Nystrom self-attention (8 heads, ``dim/2`` landmarks, 6 Moore-Penrose
iterations, depthwise residual convolution over values) follows the ``nystrom-attention`` package
that TransMIL uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from histokd_core.bag import Bag, DataInfo
from histokd_core.errors import DataError
from histokd_core.methods.base import BagModel, Prediction
from histokd_core.methods.baselines.outcome import outcome_loss, outcome_prediction
from histokd_core.nn.attention import iterative_pinv


class NystromAttention(nn.Module):
    """Nystrom-approximated multi-head self-attention, ``(1, n, dim) -> (1, n, dim)``.

    Parameters
    ----------
    dim : token dimension; heads : attention heads (``dim_head = dim // heads``).
    landmarks : number of landmarks ``m``; the sequence is zero-padded at the front to a multiple.
        Where exact softmax attention costs fewer multiply-adds than the Nystrom form
        (:meth:`exact_is_cheaper`: up to ~2 000 tokens with 256 landmarks, 6 iterations and
        64-wide heads, e.g. TransMIL's ~440-token bags) the exact attention is computed: it is
        what the Nystrom form approximates, and it is exact when every token is a landmark.
    pinv_iters : iterations of :func:`iterative_pinv`; dropout : output dropout.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        landmarks: int = 256,
        pinv_iters: int = 6,
        dropout: float = 0.1,
        residual_kernel: int = 33,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim // heads
        self.landmarks = landmarks
        self.pinv_iters = pinv_iters
        self.to_qkv = nn.Linear(dim, 3 * heads * self.dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * self.dim_head, dim), nn.Dropout(dropout))
        self.res_conv = nn.Conv2d(
            heads, heads, (residual_kernel, 1), padding=(residual_kernel // 2, 0), groups=heads,
            bias=False,
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the output ``(b, n, dim)`` and the approximate attention of token 0 to every
        token ``(b, heads, n)`` (rows of ``softmax(QK^T)`` are approximated, so entries may be
        slightly negative)."""
        b, n, _ = x.shape
        m = self.landmarks
        if self.exact_is_cheaper(n):
            return self._exact(x)
        pad = (m - n % m) % m
        x = F.pad(x, (0, 0, pad, 0))
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, -1, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        q = q * self.dim_head**-0.5
        group = x.shape[1] // m
        q_land = q.reshape(b, self.heads, m, group, self.dim_head).mean(3)
        k_land = k.reshape(b, self.heads, m, group, self.dim_head).mean(3)
        attn1 = torch.softmax(q @ k_land.transpose(-1, -2), dim=-1)
        attn2 = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1)
        attn2_inv = iterative_pinv(attn2, self.pinv_iters)
        attn3 = torch.softmax(q_land @ k.transpose(-1, -2), dim=-1)
        left = attn1 @ attn2_inv
        out = left @ (attn3 @ v) + self.res_conv(v)
        out = out.transpose(1, 2).reshape(b, -1, self.heads * self.dim_head)
        first = (left[:, :, pad : pad + 1] @ attn3)[:, :, 0, pad:]
        return self.to_out(out)[:, -n:], first


    def exact_is_cheaper(self, n: int) -> bool:
        """Whether exact attention over ``n`` tokens takes fewer multiply-adds per head
        (``2 n^2 dh``) than the Nystrom form on the padded sequence ``n'``
        (``2 n' m dh`` for the two kernels with landmarks, ``4 iters m^3`` for the pseudo-inverse,
        ``2 n' m^2``-ish products folded in as ``n' m^2``)."""
        m, dh = self.landmarks, self.dim_head
        if n <= m:
            return True
        padded = n + (m - n % m) % m
        nystrom = 2 * padded * m * dh + 4 * self.pinv_iters * m**3 + padded * m * m
        return 2 * n * n * dh <= nystrom

    def _exact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact softmax attention (what the Nystrom form gives when every token is a landmark)."""
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax((q * self.dim_head**-0.5) @ k.transpose(-1, -2), dim=-1)
        out = attn @ v + self.res_conv(v)
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
        return self.to_out(out), attn[:, :, 0]


class TransLayer(nn.Module):
    """Pre-norm Nystrom attention block with a residual connection."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, heads=8, landmarks=dim // 2, pinv_iters=6, dropout=0.1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, first = self.attn(self.norm(x))
        return x + out, first


class PPEG(nn.Module):
    """Pyramid position encoding generator: depthwise 7x7 + 5x5 + 3x3 convolutions over the square
    token grid, added to the tokens (the class token passes through)."""

    def __init__(self, dim: int = 512) -> None:
        super().__init__()
        self.proj7 = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.proj5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.proj3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        """``x (b, 1 + side^2, dim)`` -> same shape."""
        b, _, c = x.shape
        cls, feats = x[:, :1], x[:, 1:]
        grid = feats.transpose(1, 2).reshape(b, c, side, side)
        grid = grid + self.proj7(grid) + self.proj5(grid) + self.proj3(grid)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)


class TransMIL(BagModel):
    """TransMIL-style classifier over a bag of patch features (WSI only).

    Parameters
    ----------
    feat_dim : patch feature dimension ``d``; n_classes : classes (2); dim : token width (512).
    """

    task = "classification"
    needs_omics = False

    def __init__(self, feat_dim: int, n_classes: int = 2, dim: int = 512) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(feat_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.layer1 = TransLayer(dim)
        self.ppeg = PPEG(dim)
        self.layer2 = TransLayer(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def _forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats (n, d)`` -> ``logits (C,)`` and patch attention ``(n,)`` (class token of the last
        layer, averaged over heads, repeated tokens folded back, negatives clipped, sums to 1)."""
        n = feats.shape[0]
        h = self.fc1(feats)[None]
        side = math.ceil(math.sqrt(n))
        extra = side * side - n
        index = torch.cat([torch.arange(n), torch.arange(extra) % n]).to(h.device)
        h = torch.cat([self.cls_token, h[:, index]], dim=1)
        h, _ = self.layer1(h)
        h = self.ppeg(h, side)
        h, first = self.layer2(h)
        logits = self.head(self.norm(h)[:, 0])[0]
        weights = first[0].mean(0)[1:].clamp_min(0)
        attention = torch.zeros(n, device=h.device, dtype=weights.dtype)
        attention = attention.index_add_(0, index, weights)
        total = attention.sum()
        attention = attention / total if total > 0 else torch.full_like(attention, 1.0 / n)
        return logits, attention

    def loss(self, bags: Sequence[Bag]) -> dict[str, torch.Tensor]:
        """Mean cross-entropy over the bags (labels 0 .. C-1)."""
        device = self.head.weight.device
        logits = torch.stack([self._forward(b.feats.to(device).float())[0] for b in bags])
        return outcome_loss(logits, bags, "classification")

    def predict(self, bag: Bag) -> Prediction:
        logits, attention = self._forward(bag.feats.to(self.head.weight.device).float())
        return outcome_prediction(logits, "classification", attention=attention)


def build(info: DataInfo) -> TransMIL:
    """TransMIL for a classification cohort described by ``info``."""
    if info.task != "classification":
        raise DataError(
            f"the TransMIL baseline supports classification only, got task {info.task!r}"
        )
    return TransMIL(info.feat_dim, info.n_classes)
