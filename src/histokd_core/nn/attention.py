"""Memory-bounded attention layers built on ``torch.nn.functional.scaled_dot_product_attention``.

Slides hold up to ~50 000 patches, so no layer here materialises an ``(n, n)`` matrix at once:
queries are processed in chunks of ``chunk_size`` rows (peak memory ``O(chunk_size * n_keys)`` per
head), and while training each chunk is recomputed in the backward pass (activation
checkpointing), so the retained activations grow linearly with ``n``, not as ``n^2``.

:class:`PathwayPatchAttention` is SurvPath's pattern (Jaume et al., CVPR 2024): over the token
sequence ``[pathways (P), patches (n)]`` pathway queries attend to every token (one softmax over
pathways and patches) and patch queries attend to pathway tokens only; patch-to-patch attention is
masked out, which is what makes 50 000-patch slides affordable (``O(P n)``).

:func:`nystrom_attention` (Xiong et al., AAAI 2021) approximates the same softmax attention with
``m`` landmarks in ``O(n m)``; :class:`MultiHeadAttention` and :class:`SelfAttentionBlock` take
``attention="full" | "nystrom"`` (a config switch of the students; full is the papers' layer).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``scaled_dot_product_attention`` of ``(heads, n, dh)`` tensors through a batch of one.

    Given 3-d inputs torch takes its unfused math path on the CPU (the ``(n_q, n_k)`` scores
    materialised, then softmax, then a second product); with a leading batch dimension it takes
    the fused flash-attention CPU kernel, equal to 1e-7 and ~2.6 x faster (4 heads x 64, 8 000
    tokens, one thread; docs/benchmarks.md, issue 16).
    """
    return F.scaled_dot_product_attention(q[None], k[None], v[None])[0]


def chunked_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """Softmax attention ``softmax(q k^T / sqrt(dh)) v`` computed in chunks of queries.

    Parameters
    ----------
    q : ``(heads, n_q, dh)``; k, v : ``(heads, n_k, dh)``.
    chunk_size : query rows per chunk; peak memory per chunk is ``heads * chunk_size * n_k``.

    Returns
    -------
    ``(heads, n_q, dh)``. With gradients enabled each chunk is checkpointed (recomputed in the
    backward pass), so training memory is linear in ``n_q``.
    """
    if q.shape[1] <= chunk_size:
        return sdpa(q, k, v)
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    outs = []
    for start in range(0, q.shape[1], chunk_size):
        qc = q[:, start : start + chunk_size]
        if grad:
            outs.append(checkpoint(sdpa, qc, k, v, use_reentrant=False))
        else:
            outs.append(sdpa(qc, k, v))
    return torch.cat(outs, dim=1)


def iterative_pinv(x: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of a batch of square matrices ``(..., m, m)`` by the iterative
    scheme of Nystromformer (Razavi et al.), ``iters`` third-order iterations."""
    abs_x = x.abs()
    scale = abs_x.sum(-1).amax() * abs_x.sum(-2).amax()
    z = x.transpose(-1, -2) / scale
    eye = torch.eye(x.shape[-1], device=x.device, dtype=x.dtype)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


def segment_means(x: torch.Tensor, m: int) -> torch.Tensor:
    """Means of ``m`` contiguous, nearly equal segments of ``x (heads, n, dh)`` -> ``(heads, m, dh)``
    (no padding: segment ``j`` holds tokens ``i`` with ``floor(i m / n) = j``)."""
    n = x.shape[1]
    seg = torch.arange(n, device=x.device) * m // n
    sums = torch.zeros(x.shape[0], m, x.shape[2], dtype=x.dtype, device=x.device).index_add(1, seg, x)
    counts = torch.bincount(seg, minlength=m).to(x.dtype)
    return sums / counts[None, :, None]


def nystrom_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, landmarks: int = 256, pinv_iters: int = 6
) -> torch.Tensor:
    """Nystrom approximation of ``softmax(q k^T / sqrt(dh)) v`` with ``m = landmarks`` landmarks.

    ``softmax(q k~^T) pinv(softmax(q~ k~^T)) softmax(q~ k^T) v`` where ``q~, k~ (heads, m, dh)`` are
    segment means of the queries and keys (:func:`segment_means`). ``O(n m dh + m^3)`` time,
    ``O(n m)`` memory per head. With ``n_q <= m`` or ``n_k <= m`` every token is its own landmark
    and the exact attention is computed instead (:func:`chunked_sdpa`).

    Parameters
    ----------
    q : ``(heads, n_q, dh)``; k, v : ``(heads, n_k, dh)``; pinv_iters : see :func:`iterative_pinv`.
    """
    if q.shape[1] <= landmarks or k.shape[1] <= landmarks:
        return chunked_sdpa(q, k, v)
    q = q * q.shape[-1] ** -0.5
    q_land, k_land = segment_means(q, landmarks), segment_means(k, landmarks)
    kernel1 = torch.softmax(q @ k_land.transpose(-1, -2), dim=-1)
    kernel2 = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1)
    kernel3 = torch.softmax(q_land @ k.transpose(-1, -2), dim=-1)
    return (kernel1 @ iterative_pinv(kernel2, pinv_iters)) @ (kernel3 @ v)


ATTENTION_KINDS = ("full", "nystrom")


def attention_weights(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Softmax attention weights ``(heads, n_q, n_k)`` for explanation (small ``n_q`` only)."""
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention of queries ``(n_q, dim)`` over keys/values ``(n_k, dim)``.

    Parameters
    ----------
    dim : token width; heads, dim_head : ``inner = heads * dim_head``; chunk_size : see
    :func:`chunked_sdpa`.
    attention : ``"full"`` (exact softmax attention, chunked) or ``"nystrom"``
        (:func:`nystrom_attention` with ``landmarks`` landmarks). Both have the same parameters,
        so a model trained with one can run with the other (``set_attention``).
    """

    def __init__(
        self, dim: int, heads: int = 4, dim_head: int = 64, chunk_size: int = 1024,
        attention: str = "full", landmarks: int = 256,
    ):
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
        inner = heads * dim_head
        self.heads, self.dim_head, self.chunk_size = heads, dim_head, chunk_size
        self.attention, self.landmarks = attention, int(landmarks)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, inner)`` -> ``(heads, n, dim_head)``."""
        return x.reshape(x.shape[0], self.heads, self.dim_head).transpose(0, 1)

    def project(self, x_q: torch.Tensor, x_kv: torch.Tensor):
        """Per-head queries, keys and values."""
        k, v = self.to_kv(x_kv).chunk(2, dim=-1)
        return self.split(self.to_q(x_q)), self.split(k), self.split(v)

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        """``(heads, n, dim_head)`` -> ``(n, dim)`` through the output projection."""
        return self.to_out(out.transpose(0, 1).reshape(out.shape[1], -1))

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x_q, x_kv)
        if self.attention == "nystrom":
            return self.merge(nystrom_attention(q, k, v, self.landmarks))
        return self.merge(chunked_sdpa(q, k, v, self.chunk_size))

    def weights(self, x_q: torch.Tensor, x_kv: torch.Tensor) -> torch.Tensor:
        """Head-averaged attention weights ``(n_q, n_k)`` (rows sum to 1)."""
        q, k, _ = self.project(x_q, x_kv)
        return attention_weights(q, k).mean(0)


class FeedForward(nn.Module):
    """``LayerNorm -> Linear(dim, mult*dim) -> GELU -> Dropout -> Linear(mult*dim, dim)``."""

    def __init__(self, dim: int, mult: int = 1, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, mult * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mult * dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block on ``(n, dim)``: ``x + MHA(LN x)`` then ``x + FF(x)``.

    Memory is bounded by chunked queries (:func:`chunked_sdpa`); compute is ``O(n^2 dim)`` with
    ``attention="full"``, ``O(n m dim)`` with ``"nystrom"`` (``m = landmarks``).
    """

    def __init__(
        self, dim: int, heads: int = 4, dim_head: int = 64, dropout: float = 0.1,
        chunk_size: int = 1024, attention: str = "full", landmarks: int = 256,
    ):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dim_head, chunk_size, attention, landmarks)
        self.ff = FeedForward(dim, 1, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        x = x + self.attn(h, h)
        return x + self.ff(x)


class CrossAttentionBlock(nn.Module):
    """Queries ``(n_q, dim)`` attend to a context ``(n_k, dim)``: ``q + MHA(LN q, LN c)`` + FF."""

    def __init__(
        self, dim: int, heads: int = 4, dim_head: int = 64, dropout: float = 0.1,
        chunk_size: int = 1024,
    ):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dim_head, chunk_size)
        self.ff = FeedForward(dim, 1, dropout)

    def forward(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = queries + self.attn(self.norm_q(queries), self.norm_kv(context))
        return x + self.ff(x)

    def weights(self, queries: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Head-averaged attention ``(n_q, n_k)`` of the queries over the context."""
        return self.attn.weights(self.norm_q(queries), self.norm_kv(context))


class PathwayPatchAttention(nn.Module):
    """SurvPath's masked attention over ``[pathways (P, dim), patches (n, dim)]``.

    One shared ``LayerNorm`` and q/k/v projection for all tokens; pathway queries attend over
    pathway and patch keys (one softmax, ``P x (P + n)``), patch queries over pathway keys only
    (``n x P``). Equivalent to full attention with the patch-to-patch block masked to ``-inf``,
    without ever forming it. As in SurvPath there is no residual; a feed-forward and a final
    ``LayerNorm`` follow.

    Returns
    -------
    ``(pathway_out (P, dim), patch_out (n, dim))``.
    """

    def __init__(
        self, dim: int, heads: int = 4, dim_head: int = 64, dropout: float = 0.1,
        chunk_size: int = 1024,
    ):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads, dim_head, chunk_size)
        self.ff = FeedForward(dim, 1, dropout)
        self.norm_out = nn.LayerNorm(dim)

    def forward(
        self, pathways: torch.Tensor, patches: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_path = pathways.shape[0]
        x = self.norm(torch.cat([pathways, patches], dim=0))
        q, k, v = self.attn.project(x, x)
        out_path = chunked_sdpa(q[:, :n_path], k, v, self.attn.chunk_size)
        out_patch = chunked_sdpa(
            q[:, n_path:], k[:, :n_path], v[:, :n_path], self.attn.chunk_size
        )
        out = self.attn.merge(torch.cat([out_path, out_patch], dim=1))
        out = self.norm_out(out + self.ff(out))
        return out[:n_path], out[n_path:]

    def pathway_weights(self, pathways: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """Head-averaged attention of each pathway over the patches, renormalised over the
        patches: ``(P, n)``, rows sum to 1 (the teacher's pathway-conditioned maps)."""
        n_path = pathways.shape[0]
        x = self.norm(torch.cat([pathways, patches], dim=0))
        q, k, _ = self.attn.project(x[:n_path], x)
        w = attention_weights(q, k[:, n_path:]).mean(0)
        return w
