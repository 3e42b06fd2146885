"""torchvision's Swin-Transformer attention on a token grid of one fixed size, for static ONNX graphs.

torchvision's ``shifted_window_attention`` reads the grid's size from the input's shape and
builds the padding, the window partition and the shifted windows' mask from it on every
call. Exported, that is ~100 Shape/Gather/Range/ScatterND nodes of shape arithmetic, which
ONNX Runtime's symbolic shape inference (the first step of INT8 quantization) cannot
follow. :class:`FixedGridWindowAttention` is the same module (torchvision's parameters,
relative-position bias and initialisation) for a grid known when it is built: sizes are
Python constants, the mask a buffer, the batch the only free axis. Same outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.swin_transformer import ShiftedWindowAttention, SwinTransformerBlock

from qualitynet.errors import QualityNetError

__all__ = ["FixedGridWindowAttention", "swin_block"]


class FixedGridWindowAttention(ShiftedWindowAttention):
    """(Shifted) window attention on ``(N, grid, grid, C)``, the grid a multiple of the window.

    As in torchvision, a window as large as the grid is not shifted.
    """

    mask: torch.Tensor

    def __init__(self, dim: int, window_size: list[int], shift_size: list[int], num_heads: int, *, grid: int,
                 attention_dropout: float = 0.0, dropout: float = 0.0) -> None:
        super().__init__(dim, window_size, shift_size, num_heads, attention_dropout=attention_dropout,
                         dropout=dropout)
        window = window_size[0]
        if window_size[0] != window_size[1] or grid % window:
            raise QualityNetError(f"Swin attention: the {grid}x{grid} grid is not a whole number of "
                                  f"{window_size[0]}x{window_size[1]} windows")
        self.grid, self.window, self.dim = grid, window, dim
        self.shift = 0 if window >= grid else shift_size[0]
        self.register_buffer("mask", self._shift_mask(), persistent=False)

    def _shift_mask(self) -> torch.Tensor:
        """``(windows, 1, L, L)``: -100 between tokens that the cyclic shift brought together from apart
        (torchvision's mask), else 0 (all zeros, and unused, without a shift)."""
        g, w, s = self.grid, self.window, self.shift
        region = torch.zeros(g, g)
        if s:
            bounds = ((0, g - w), (g - w, g - s), (g - s, g))
            for i, (top, bottom) in enumerate(bounds):
                for j, (left, right) in enumerate(bounds):
                    region[top:bottom, left:right] = 3 * i + j
        labels = self._windows(region[None, :, :, None], 1)[..., 0]  # (windows, L)
        different = labels[:, None, :] != labels[:, :, None]
        return torch.where(different, -100.0, 0.0)[:, None]

    def _windows(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        """``(N, grid, grid, channels)`` -> ``(N * windows, L, channels)``."""
        n, w = self.grid // self.window, self.window
        return x.reshape(-1, n, w, n, w, channels).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, w, s, heads = self.grid, self.window, self.shift, self.num_heads
        n, tokens, channels = g // w, w * w, self.dim
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
        qkv = self.qkv(self._windows(x, channels)).reshape(-1, tokens, 3, heads, channels // heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (channels // heads) ** -0.5, qkv[1], qkv[2]
        attn = q.matmul(k.transpose(-2, -1)) + self.get_relative_position_bias()
        if s:
            attn = (attn.reshape(-1, n * n, heads, tokens, tokens) + self.mask).reshape(-1, heads, tokens, tokens)
        attn = F.dropout(F.softmax(attn, dim=-1), p=self.attention_dropout, training=self.training)
        x = attn.matmul(v).transpose(1, 2).reshape(-1, tokens, channels)
        x = F.dropout(self.proj(x), p=self.dropout, training=self.training)
        x = x.reshape(-1, n, n, w, w, channels).permute(0, 1, 3, 2, 4, 5).reshape(-1, g, g, channels)
        return torch.roll(x, shifts=(s, s), dims=(1, 2)) if s else x


def swin_block(dim: int, heads: int, window: int, shifted: bool, grid: int) -> SwinTransformerBlock:
    """torchvision's ``SwinTransformerBlock`` (pre-norm attention and MLP, ratio 4) with
    :class:`FixedGridWindowAttention` on a ``grid`` x ``grid`` token map; ``shifted``: by half a window."""

    def attention(dim: int, window_size: list[int], shift_size: list[int], num_heads: int, **kwargs: float
                  ) -> FixedGridWindowAttention:
        return FixedGridWindowAttention(dim, window_size, shift_size, num_heads, grid=grid, **kwargs)

    shift = window // 2 if shifted else 0
    return SwinTransformerBlock(dim, heads, [window, window], [shift, shift], attn_layer=attention)
