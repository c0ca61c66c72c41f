"""Grad-CAM (Selvaraju et al., ICCV 2017) for both image encoders from one forward and one backward.

Hooks on each encoder's last stage replace its output with a detached copy that
requires grad. The single ``torch.autograd.grad`` call therefore runs only from
the target logits back to those stages, never through the trunks. The
map is ``ReLU(sum_c w_c A_c)`` with ``w_c`` the spatial mean of the gradient,
interpolated to the crop size in every axis and min-max scaled per sample.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)
from torch import nn

from hipfuse.inference.model.fusion import (
    CT_INDEX,
    RADIOGRAPH_INDEX,
    FusionOutput,
    HipFusionNet,
    _synchronize,
)

# A map whose range is below this fraction of its maximum is flat: it carries no
# localisation and becomes zeros. An all-zero map (all negative before the ReLU) is flat.
_FLAT_RELATIVE_RANGE = 1e-5


@dataclass
class GradCamResult:
    """Forward output and per-sample heat maps.

    Attributes
    ----------
    output
        The forward pass the maps explain (tensors detached).
    target_classes
        ``(B,)`` class index explained for each sample.
    radiograph_cam
        ``(B, H, W)`` maps in ``[0, 1]`` or ``None`` when no sample has a
        radiograph; rows of samples without one are zeros.
    ct_cam
        ``(B, D, H, W)`` maps in ``[0, 1]`` or ``None`` when no sample has a CT;
        rows of samples without one are zeros.
    """

    output: FusionOutput
    target_classes: torch.Tensor
    radiograph_cam: torch.Tensor | None
    ct_cam: torch.Tensor | None


def cam_from_activations(
    activations: torch.Tensor, gradients: torch.Tensor, output_shape: Sequence[int]
) -> torch.Tensor:
    """Compute Grad-CAM maps from a stage's activations and their gradients.

    Parameters
    ----------
    activations, gradients
        ``(N, C, *spatial)`` with 2 or 3 spatial axes.
    output_shape
        Spatial shape to interpolate to (the crop shape).

    Returns
    -------
    torch.Tensor
        ``(N, *output_shape)`` in ``[0, 1]``. A map that is flat, all negative
        before the ReLU or not finite is all zeros.
    """
    spatial_dims = activations.ndim - 2
    if spatial_dims not in (2, 3) or len(output_shape) != spatial_dims:
        raise ValueError(
            f"activations of shape {tuple(activations.shape)} need an output shape with "
            f"{spatial_dims} axes, got {tuple(output_shape)}"
        )
    spatial_axes = tuple(range(2, activations.ndim))
    channel_weights = gradients.float().mean(dim=spatial_axes, keepdim=True)
    cam = torch.relu((channel_weights * activations.float()).sum(dim=1, keepdim=True))
    cam = torch.nan_to_num(cam, nan=0.0, posinf=0.0, neginf=0.0)
    # Flatness is judged before interpolation, whose rounding would turn a
    # constant map into noise spanning [0, 1] after scaling.
    coarse = cam.flatten(start_dim=1)
    coarse_high = coarse.max(dim=1).values
    informative = (coarse_high - coarse.min(dim=1).values) > _FLAT_RELATIVE_RANGE * coarse_high

    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    cam = F.interpolate(cam, size=tuple(output_shape), mode=mode, align_corners=False)
    cam = cam.squeeze(1)
    flat = cam.flatten(start_dim=1)
    low = flat.min(dim=1).values
    value_range = flat.max(dim=1).values - low
    informative &= value_range > 0
    view = (-1,) + (1,) * spatial_dims
    scaled = (cam - low.view(view)) / torch.where(value_range > 0, value_range, 1.0).view(view)
    return torch.where(informative.view(view), scaled, torch.zeros_like(scaled)).clamp(0.0, 1.0)


@contextmanager
def _capture_feature_maps(
    modules: dict[str, nn.Module],
) -> Iterator[dict[str, torch.Tensor]]:
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
            # A fresh leaf: the backward pass stops here instead of running through the trunk.
            leaf = output.detach().requires_grad_(True)
            captured[name] = leaf
            return leaf

        return hook

    for name, module in modules.items():
        handles.append(module.register_forward_hook(make_hook(name)))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _resolve_targets(
    target_class: int | Sequence[int] | torch.Tensor | None, logits: torch.Tensor
) -> torch.Tensor:
    batch, classes = logits.shape
    if target_class is None:
        return logits.argmax(dim=1)
    targets = torch.as_tensor(target_class, dtype=torch.long, device=logits.device)
    if targets.ndim == 0:
        targets = targets.expand(batch)
    if targets.shape != (batch,):
        raise ValueError(f"target_class needs one class per sample ({batch}), got {target_class}")
    if bool(((targets < 0) | (targets >= classes)).any()):
        raise ValueError(f"target_class must lie in [0, {classes - 1}], got {target_class}")
    return targets


def compute_gradcam(
    model: HipFusionNet,
    radiograph: torch.Tensor | None,
    ct: torch.Tensor | None,
    text_embedding: torch.Tensor | None,
    mask: torch.Tensor,
    target_class: int | Sequence[int] | torch.Tensor | None = None,
    *,
    timings: dict[str, float] | None = None,
) -> GradCamResult:
    """Run one forward pass and one backward pass and return Grad-CAM maps for both images.

    Parameters
    ----------
    model
        The fusion network, normally in eval mode.
    radiograph, ct, text_embedding, mask
        As for :meth:`HipFusionNet.forward`.
    target_class
        Class explained: one index for all samples, one per sample, or ``None``
        for each sample's predicted class.
    timings
        When given, receives the forward stage times (see the model) and
        ``gradcam_backward_s``.
    """
    mask = mask.bool()
    hooked = {
        "radiograph": model.radiograph_encoder.feature_layer,
        "ct": model.ct_encoder.feature_layer,
    }
    with torch.enable_grad(), _capture_feature_maps(hooked) as captured:
        output = model(radiograph, ct, text_embedding, mask, timings=timings)

    started = time.perf_counter()
    targets = _resolve_targets(target_class, output.logits)
    leaves = [captured[name] for name in ("radiograph", "ct") if name in captured]
    gradients: dict[str, torch.Tensor] = {}
    if leaves:
        # Samples are independent in eval mode, so row i of the sum's gradient is
        # the gradient of sample i's own logit.
        score = output.logits.gather(1, targets[:, None]).sum()
        if score.requires_grad:
            grads = torch.autograd.grad(score, leaves, allow_unused=True)
        else:
            grads = tuple(None for _ in leaves)
        names = [name for name in ("radiograph", "ct") if name in captured]
        for name, leaf, grad in zip(names, leaves, grads, strict=True):
            gradients[name] = grad if grad is not None else torch.zeros_like(leaf)

    radiograph_cam = None
    ct_cam = None
    with torch.no_grad():
        if "radiograph" in captured and radiograph is not None:
            radiograph_cam = _scatter_maps(
                captured["radiograph"],
                gradients["radiograph"],
                mask[:, RADIOGRAPH_INDEX],
                radiograph.shape[2:],
            )
        if "ct" in captured and ct is not None:
            ct_cam = _scatter_maps(captured["ct"], gradients["ct"], mask[:, CT_INDEX], ct.shape[2:])
    if timings is not None:
        _synchronize(mask.device)
        timings["gradcam_backward_s"] = (
            timings.get("gradcam_backward_s", 0.0) + time.perf_counter() - started
        )
    detached = FusionOutput(
        logits=output.logits.detach(),
        attention=output.attention.detach(),
        probabilities=output.probabilities.detach(),
    )
    return GradCamResult(
        output=detached, target_classes=targets, radiograph_cam=radiograph_cam, ct_cam=ct_cam
    )


def _scatter_maps(
    activations: torch.Tensor,
    gradients: torch.Tensor,
    present: torch.Tensor,
    crop_shape: Sequence[int],
) -> torch.Tensor:
    # The encoder ran on the present samples only; put their maps back in batch order.
    maps = cam_from_activations(activations, gradients, tuple(crop_shape))
    batch = present.shape[0]
    if maps.shape[0] == batch:
        return maps
    full = maps.new_zeros((batch, *maps.shape[1:]))
    full[present] = maps
    return full
