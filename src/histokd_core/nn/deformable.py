"""Deformable attention over a 2-D patch-feature grid (DAT-style, as in the DML public code).

A reference grid of ``n_points x n_points`` points spans the feature map; a small offset network
on the query map (depth-wise conv ``offset_kernel`` / ``offset_stride`` -> GELU -> 1x1 conv to
``(dx, dy)`` -> ``tanh * offset_scale``) moves every point, in units of the reference spacing.
Keys and values are bilinearly sampled at the moved points (``grid_sample``, zeros outside the
map) and attended by multi-head attention from arbitrary query tokens. Sampled points that land
on padding get a ``log(validity)`` attention bias, so padded cells are not attended.

Differences from the public code (documented): the reference grid has a fixed side
``n_points`` (the public code gets 12 x 12 from a 50 x 50 map with stride 4) so attention maps
of different bags and magnifications have the same size; the offset map is resized to it
bilinearly. The continuous relative-position bias is not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def reference_points(height: int, width: int, side: int, device=None) -> torch.Tensor:
    """``(side * side, 2)`` ``(x, y)`` points (in cells) at the centres of a ``side x side``
    partition of a ``height x width`` map; with ``side == height == width`` they are the integer
    cells ``0 .. side-1``. Row-major order."""
    ys = (torch.arange(side, device=device, dtype=torch.float32) + 0.5) * height / side - 0.5
    xs = (torch.arange(side, device=device, dtype=torch.float32) + 0.5) * width / side - 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)


def sample_points(fmap: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``fmap (B, C, H, W)`` at ``points (B, P, 2)`` ``(x, y)`` in cell
    units (integer = exact cell, zeros outside the map). Returns ``(B, C, P)``."""
    _, _, h, w = fmap.shape
    gx = 2 * points[..., 0] / max(w - 1, 1) - 1 if w > 1 else points[..., 0] * 2.0
    gy = 2 * points[..., 1] / max(h - 1, 1) - 1 if h > 1 else points[..., 1] * 2.0
    grid = torch.stack([gx, gy], dim=-1)[:, :, None, :]
    out = F.grid_sample(
        fmap, grid.to(fmap.dtype), mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out[..., 0]


class DeformableAttention2D(nn.Module):
    """Multi-head attention from query tokens to keys/values sampled at deformed grid points.

    Parameters
    ----------
    dim : token / map channels ``C``; heads, dim_head : attention heads and width per head.
    offset_groups : channel groups with their own offsets (``C`` must divide by it).
    offset_kernel, offset_stride : depth-wise offset convolution (6, 4 in the public code).
    offset_scale : max offset, in reference-grid spacings (4).
    n_points : side of the reference grid (12 -> 144 sampled points).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        dim_head: int = 16,
        offset_groups: int = 1,
        offset_kernel: int = 6,
        offset_stride: int = 4,
        offset_scale: float = 4.0,
        n_points: int = 12,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % offset_groups:
            raise ValueError(f"dim {dim} must be divisible by offset_groups {offset_groups}")
        self.heads, self.dim_head, self.groups = heads, dim_head, offset_groups
        self.offset_kernel, self.offset_stride = offset_kernel, offset_stride
        self.offset_scale, self.n_points = offset_scale, n_points
        gdim = dim // offset_groups
        pad = max((offset_kernel - offset_stride + 1) // 2, 0)
        self.to_offsets = nn.Sequential(
            nn.Conv2d(gdim, gdim, offset_kernel, stride=offset_stride, padding=pad, groups=gdim),
            nn.GELU(),
            nn.Conv2d(gdim, 2, 1, bias=False),
        )
        self._pad = pad
        self.to_offset_query = nn.Conv2d(dim, dim, 1)
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def offsets(self, query_map: torch.Tensor) -> torch.Tensor:
        """``(groups, n_points * n_points, 2)`` offsets in cells for ``query_map (C, H, W)``."""
        c, h, w = query_map.shape
        q = self.to_offset_query(query_map[None]).reshape(self.groups, c // self.groups, h, w)
        need = self.offset_kernel - 2 * self._pad
        if h < need or w < need:
            q = F.pad(q, (0, max(need - w, 0), 0, max(need - h, 0)))
        off = torch.tanh(self.to_offsets(q)) * self.offset_scale
        side = self.n_points
        off = F.interpolate(off, size=(side, side), mode="bilinear", align_corners=False)
        spacing = torch.tensor([w / side, h / side], device=off.device, dtype=off.dtype)
        return off.flatten(2).transpose(1, 2) * spacing

    def forward(
        self,
        query_map: torch.Tensor,
        kv_map: torch.Tensor,
        mask: torch.Tensor | None = None,
        queries: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attend from ``queries (Nq, C)`` (default: every cell of ``query_map``) to ``kv_map``.

        Parameters
        ----------
        query_map : ``(C, H, W)`` map the offsets are computed from.
        kv_map : ``(C, H, W)`` histology map sampled for keys / values.
        mask : ``(H, W)`` bool, True on real patches (None = all real).

        Returns
        -------
        out ``(Nq, C)``, attention ``(heads, Nq, P)`` (P = n_points**2) and the sampled points
        ``(groups, P, 2)`` in cells.
        """
        c, h, w = kv_map.shape
        if queries is None:
            queries = query_map.flatten(1).t()
        ref = reference_points(h, w, self.n_points, device=kv_map.device)
        points = ref[None] + self.offsets(query_map)
        g = self.groups
        sampled = sample_points(kv_map.reshape(g, c // g, h, w), points)
        sampled = sampled.reshape(c, -1).t()
        if mask is None:
            mask = torch.ones(h, w, dtype=torch.bool, device=kv_map.device)
        mask_map = mask[None, None].to(kv_map.dtype).expand(g, 1, h, w)
        valid = sample_points(mask_map, points).mean(0)[0]
        nq, p, hd = queries.shape[0], sampled.shape[0], self.dim_head
        q = self.to_q(queries).view(nq, self.heads, hd).transpose(0, 1)
        k = self.to_k(sampled).view(p, self.heads, hd).transpose(0, 1)
        v = self.to_v(sampled).view(p, self.heads, hd).transpose(0, 1)
        sim = q @ k.transpose(1, 2) * hd**-0.5 + torch.log(valid.clamp_min(1e-4))[None, None]
        attn = sim.softmax(-1)
        out = (attn @ v).transpose(0, 1).reshape(nq, self.heads * hd)
        return self.to_out(out), attn, points
