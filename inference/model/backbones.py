"""Image encoders: one MONAI ResNet code path for 2D radiographs and 3D CT crops."""

from __future__ import annotations

import torch
from monai.networks.nets import ResNet
from torch import nn

# Block kind and blocks per stage, after He et al. 2016 (Table 1) as MONAI tabulates them.
# Every depth uses projection shortcuts (1x1 convolution without bias, MONAI's
# shortcut "B") as torchvision's ResNets do. No pretrained checkpoint constrains
# the layout, because a bundle carries all of its weights.
RESNET_LAYOUTS: dict[int, tuple[str, list[int]]] = {
    10: ("basic", [1, 1, 1, 1]),
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
}

STANDARD_WIDTH = 64
"""Channels of the first residual stage of a full-width ResNet."""


class ImageEncoder(nn.Module):
    """ResNet trunk that returns globally averaged features of its last stage.

    The forward pass runs the MONAI ResNet's stages explicitly and averages the
    ``layer4`` output with ``mean``, whose backward pass is deterministic on CUDA
    (adaptive average pooling's is not). ``feature_layer`` is the module Grad-CAM
    hooks.

    Parameters
    ----------
    resnet
        A MONAI ResNet built with ``feed_forward=False``.
    spatial_dims
        2 for radiographs, 3 for CT.
    """

    def __init__(self, resnet: ResNet, spatial_dims: int) -> None:
        super().__init__()
        self.resnet = resnet
        self.spatial_dims = spatial_dims
        last_block = resnet.layer4[-1]
        last_norm = last_block.bn3 if hasattr(last_block, "bn3") else last_block.bn2
        self.out_features: int = int(last_norm.num_features)

    @property
    def feature_layer(self) -> nn.Module:
        """Last convolutional stage (``layer4``), the Grad-CAM target."""
        return self.resnet.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``(B, 1, *spatial)`` images into ``(B, out_features)`` features."""
        memory_format = _memory_format_of(self.resnet.conv1.weight, self.spatial_dims)
        x = x.contiguous(memory_format=memory_format)
        net = self.resnet
        x = net.act(net.bn1(net.conv1(x)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        x = net.layer1(x)
        x = net.layer2(x)
        x = net.layer3(x)
        x = net.layer4(x)
        return x.mean(dim=tuple(range(2, 2 + self.spatial_dims)))

    def use_channels_last(self) -> None:
        """Store weights channels-last, which oneDNN convolutions on CPU run much faster.

        Measured with torch 2.13 on 2 CPU threads, eval mode, ResNet50: 2D batch of
        two 224² crops 1.52 s → 0.11 s under ``inference_mode`` (0.15 s → 0.12 s with
        autograd on); 3D 64×128×128 crop 0.45 s → 0.39 s.
        """
        memory_format = torch.channels_last if self.spatial_dims == 2 else torch.channels_last_3d
        self.to(memory_format=memory_format)


def _memory_format_of(weight: torch.Tensor, spatial_dims: int) -> torch.memory_format:
    if spatial_dims == 2 and weight.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if spatial_dims == 3 and weight.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def stage_widths(width: int | float) -> list[int]:
    """Return the channels of the four residual stages.

    Parameters
    ----------
    width
        An ``int`` is the first stage's channel count (64 for a standard ResNet);
        a ``float`` scales the standard widths (``0.25`` gives 16, 32, 64, 128).
    """
    if isinstance(width, bool) or not isinstance(width, int | float):
        raise TypeError(f"width must be an int (channels) or a float (scale), got {width!r}")
    base = width if isinstance(width, int) else round(STANDARD_WIDTH * width)
    if base < 1:
        raise ValueError(f"width {width!r} gives {base} channels in the first stage; use >= 1")
    return [base, 2 * base, 4 * base, 8 * base]


def build_image_encoder(
    spatial_dims: int,
    depth: int,
    width: int | float = STANDARD_WIDTH,
    *,
    conv1_stride: int = 2,
    in_channels: int = 1,
) -> ImageEncoder:
    """Build a ResNet image encoder without a classification layer.

    Parameters
    ----------
    spatial_dims
        2 (radiograph) or 3 (CT).
    depth
        10, 18, 34 or 50.
    width
        First-stage channels (``int``) or scale of the standard widths (``float``).
    conv1_stride
        Stride of the 7-wide first convolution in every axis.
    in_channels
        Input channels (1 for grey-level images).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if depth not in RESNET_LAYOUTS:
        raise ValueError(f"unsupported ResNet depth {depth}: use one of {sorted(RESNET_LAYOUTS)}")
    block, layers = RESNET_LAYOUTS[depth]
    resnet = ResNet(
        block=block,
        layers=layers,
        block_inplanes=stage_widths(width),
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        conv1_t_stride=conv1_stride,
        shortcut_type="B",
        bias_downsample=False,
        feed_forward=False,
    )
    return ImageEncoder(resnet, spatial_dims)
