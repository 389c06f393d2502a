"""SwinUNETR's window attention through PyTorch's fused ``scaled_dot_product_attention``, in training too.

MONAI's ``WindowAttention`` takes a fused SDPA path when built with ``use_flash_attention=True``,
but only while gradients are off (inference and validation). Training then materialises every
window's attention matrix (343 x 343 per head for a 7^3 window): in a 3D SwinUNETR step on the CPU,
``bmm`` and ``softmax`` with their backward take about 60 % of the time. SDPA with the same additive
bias (relative position bias plus the shifted-window mask) computes the same function without that
matrix, forward and backward. This subclass only lifts the no-grad condition; its parameters and
buffers, and so every checkpoint key, are MONAI's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import WindowAttention

__all__ = ["FusedWindowAttention", "fuse_window_attention"]


class FusedWindowAttention(WindowAttention):
    """MONAI ``WindowAttention`` whose fused SDPA path also runs with gradients (training).

    Its attention dropout is applied inside SDPA while training, as MONAI's unfused path applies
    ``attn_drop`` to the attention weights.
    """

    def forward(self, x, mask):  # unannotated, as MONAI's: TorchScript reads this signature
        if torch.jit.is_scripting() or not self.use_flash_attention:
            return self._unfused(x, mask)
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        index = self.relative_position_index.clone()[:n, :n].reshape(-1)  # type: ignore[operator]
        bias = self.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1)
        if mask is not None:
            nw = mask.shape[0]
            bias = bias.view(1, 1, self.num_heads, n, n) + mask.reshape(1, nw, 1, n, n)
            bias = bias.expand(b // nw, nw, self.num_heads, n, n).reshape(b, self.num_heads, n, n)
        else:
            bias = bias.unsqueeze(0)
        dropout = self.attn_drop.p if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout, scale=self.scale)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))

    @torch.jit.ignore
    def _unfused(self, x, mask):
        """MONAI's own forward (TorchScript cannot compile a ``super()`` call; SwinUNETR is exported by tracing)."""
        return super().forward(x, mask)


def fuse_window_attention(network: nn.Module) -> nn.Module:
    """Let every MONAI ``WindowAttention`` of ``network`` built with ``use_flash_attention=True`` use SDPA
    in training as well (in place; other modules and keys unchanged). Returns ``network``."""
    for module in network.modules():
        if type(module) is WindowAttention and getattr(module, "use_flash_attention", False):
            module.__class__ = FusedWindowAttention
    return network
