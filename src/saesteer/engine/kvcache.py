"""A preallocated key/value cache for one chunk of rows, reused from chunk to chunk.

Values live in a buffer ``[layers, rows, kv_heads, max_len, head_dim]`` and keys, transposed, in
``[layers, rows, kv_heads, head_dim, max_len]``, so that attention's ``q @ K^T`` reads the cache in place (a
matrix with leading dimension ``max_len``) instead of copying a transpose every step. A step writes its
positions in place; attention reads views up to the filled length (no copies, no growth). Rows that leave
the batch are compacted in place over the filled length only.
"""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """Static cache: ``write`` a step's keys/values at ``start``, read ``keys(layer)``/``values(layer)``."""

    def __init__(self, n_layers: int, rows: int, n_kv_heads: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype, device: torch.device):
        self.k = torch.empty((n_layers, rows, n_kv_heads, head_dim, max_len), dtype=dtype, device=device)  # K^T
        self.v = torch.empty((n_layers, rows, n_kv_heads, max_len, head_dim), dtype=dtype, device=device)
        self.rows = rows
        self.length = 0

    @staticmethod
    def bytes_per_row(n_layers: int, n_kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * n_layers * n_kv_heads * max_len * head_dim * torch.empty((), dtype=dtype).element_size()

    def fits(self, n_layers: int, rows: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device) -> bool:
        L, R, H, T, D = self.v.shape
        return (L, H, D) == (n_layers, n_kv_heads, head_dim) and R >= rows and T >= max_len and \
            self.k.dtype == dtype and self.k.device == torch.device(device)

    def reset(self, rows: int) -> "KVCache":
        self.rows = rows
        self.length = 0
        return self

    @property
    def max_len(self) -> int:
        return self.v.shape[3]

    def write(self, layer: int, k: Tensor, v: Tensor, start: int, rows: Tensor | None = None) -> None:
        """Store ``k, v [rows, kv_heads, T, head_dim]`` at positions ``start..start+T``.

        ``rows`` (optional): write source row ``rows[i]`` into cache row ``i`` (shared rows fanned out).
        """
        t = k.shape[2]
        if rows is not None:
            k, v = k.index_select(0, rows), v.index_select(0, rows)
        self.k[layer, : self.rows, :, :, start:start + t] = k.transpose(-1, -2)
        self.v[layer, : self.rows, :, start:start + t] = v

    def write_at(self, layer: int, k: Tensor, v: Tensor, slot: Tensor) -> None:
        """Store one position ``k, v [rows, kv_heads, 1, head_dim]`` at ``slot`` (a 0-d device tensor)."""
        index = slot.view(1)
        self.k[layer, : self.rows].index_copy_(3, index, k.transpose(-1, -2))
        self.v[layer, : self.rows].index_copy_(2, index, v)

    def keys_t(self, layer: int, length: int, rows: Tensor | None = None) -> Tensor:
        """Keys transposed, ``[rows, kv_heads, head_dim, length]``: a view, or a gather of ``rows`` (shared-prefix
        groups)."""
        k = self.k[layer, : self.rows, :, :, :length]
        return k if rows is None else k.index_select(0, rows)

    def values(self, layer: int, length: int, rows: Tensor | None = None) -> Tensor:
        v = self.v[layer, : self.rows, :, :length]
        return v if rows is None else v.index_select(0, rows)

    def select_rows(self, index: Tensor) -> None:
        """Keep cache rows ``index`` (in that order) as rows ``0..len(index)``, over the filled length."""
        n = index.numel()
        if self.length > 0:
            live = self.k[:, : self.rows, :, :, : self.length]
            self.k[:, :n, :, :, : self.length] = live.index_select(1, index)
            live = self.v[:, : self.rows, :, : self.length]
            self.v[:, :n, :, : self.length] = live.index_select(1, index)
        self.rows = n
