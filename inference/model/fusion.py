"""Multimodal hip classifier: two image encoders, a text projection and attention fusion.

Each present modality is encoded, projected to a common ``embed_dim`` (LayerNorm,
then Linear) and scored by a small tanh MLP shared by all modalities
(attention-based pooling after Ilse et al., ICML 2018). The scores of missing
modalities are set to -inf, so the softmax gives them exactly zero weight, and
the fused vector is the attention-weighted sum of the embeddings. Concatenation
fusion is kept for comparison.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from hipfuse.inference.model.backbones import ImageEncoder, build_image_encoder
from hipfuse.inference.model.config import ArchitectureConfig, FusionKind
from hipfuse.inference.types import HIP_CLASSES, INPUT_MODALITIES, InputModality

RADIOGRAPH_INDEX = INPUT_MODALITIES.index(InputModality.RADIOGRAPH)
CT_INDEX = INPUT_MODALITIES.index(InputModality.CT)
TEXT_INDEX = INPUT_MODALITIES.index(InputModality.TEXT)


@dataclass
class FusionOutput:
    """Result of one forward pass.

    Attributes
    ----------
    logits
        ``(B, classes)`` raw logits; training applies cross-entropy to these.
    attention
        ``(B, 3)`` modality weights in ``INPUT_MODALITIES`` order, exactly 0 for a
        missing modality. Concatenation fusion learns no weights and reports a
        uniform weight over the present modalities.
    probabilities
        ``(B, classes)`` softmax of ``logits / temperature``.
    """

    logits: torch.Tensor
    attention: torch.Tensor
    probabilities: torch.Tensor


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HipFusionNet(nn.Module):
    """Classify one hip from any non-empty subset of radiograph, CT and text.

    Parameters
    ----------
    architecture
        Encoder depths and widths, embedding size, fusion kind and dropout.
    """

    def __init__(self, architecture: ArchitectureConfig) -> None:
        super().__init__()
        self.architecture = architecture
        embed_dim = architecture.embed_dim

        self.radiograph_encoder: ImageEncoder = build_image_encoder(
            2,
            architecture.radiograph.depth,
            architecture.radiograph.width,
            conv1_stride=architecture.conv1_stride,
        )
        self.ct_encoder: ImageEncoder = build_image_encoder(
            3,
            architecture.ct.depth,
            architecture.ct.width,
            conv1_stride=architecture.conv1_stride,
        )

        self.projections = nn.ModuleDict(
            {
                InputModality.RADIOGRAPH.value: _projection(
                    self.radiograph_encoder.out_features, embed_dim
                ),
                InputModality.CT.value: _projection(self.ct_encoder.out_features, embed_dim),
                InputModality.TEXT.value: _projection(architecture.text_dim, embed_dim),
            }
        )

        self.fusion = architecture.fusion
        if self.fusion is FusionKind.ATTENTION:
            self.attention_scorer: nn.Module | None = nn.Sequential(
                nn.Linear(embed_dim, architecture.attention_hidden),
                nn.Tanh(),
                # No bias: it would shift every modality's score alike, which the
                # softmax ignores, so it could never receive a real gradient.
                nn.Linear(architecture.attention_hidden, 1, bias=False),
            )
            classifier_in = embed_dim
        else:
            self.attention_scorer = None
            # Every embedding slot (zeros when missing) plus the three presence bits.
            classifier_in = len(INPUT_MODALITIES) * embed_dim + len(INPUT_MODALITIES)

        self.dropout = nn.Dropout(architecture.dropout)
        self.classifier = nn.Linear(classifier_in, len(HIP_CLASSES))
        # Saved with the weights so a fitted calibration travels with the bundle.
        self.register_buffer("temperature", torch.tensor(1.0))

    def set_temperature(self, value: float) -> None:
        """Store the calibration temperature that divides logits before the softmax."""
        if not value > 0 or not torch.isfinite(torch.tensor(value)):
            raise ValueError(f"temperature must be a positive finite number, got {value}")
        self.temperature.fill_(float(value))

    def use_channels_last(self) -> None:
        """Switch both image encoders to channels-last weights (faster on CPU)."""
        self.radiograph_encoder.use_channels_last()
        self.ct_encoder.use_channels_last()

    def forward(
        self,
        radiograph: torch.Tensor | None,
        ct: torch.Tensor | None,
        text_embedding: torch.Tensor | None,
        mask: torch.Tensor,
        *,
        timings: dict[str, float] | None = None,
    ) -> FusionOutput:
        """Classify a batch of hips.

        Parameters
        ----------
        radiograph
            ``(B, 1, H, W)`` normalised radiograph crops, or ``None``.
        ct
            ``(B, 1, D, H, W)`` normalised CT crops, or ``None``.
        text_embedding
            ``(B, text_dim)`` note embeddings, or ``None``.
        mask
            ``(B, 3)`` bool, which modality each sample has, in ``INPUT_MODALITIES``
            order. Rows of a missing modality are never read, so their content
            does not matter, and a modality missing for the whole batch skips its
            encoder.
        timings
            When given, receives seconds spent in ``radiograph_encoder_s``,
            ``ct_encoder_s`` and ``fusion_s`` (added to existing values).

        Raises
        ------
        ValueError
            When a sample has no modality, a present modality has no tensor, or
            a tensor has the wrong shape.
        """
        mask = self._check_mask(mask)
        batch = mask.shape[0]
        inputs = {
            InputModality.RADIOGRAPH: (radiograph, 4),
            InputModality.CT: (ct, 5),
            InputModality.TEXT: (text_embedding, 2),
        }
        embeddings = []
        for index, modality in enumerate(INPUT_MODALITIES):
            tensor, ndim = inputs[modality]
            present = mask[:, index]
            started = time.perf_counter()
            embeddings.append(self._embed(modality, tensor, ndim, present, batch))
            if timings is not None and modality is not InputModality.TEXT:
                _synchronize(mask.device)
                key = f"{modality.value}_encoder_s"
                timings[key] = timings.get(key, 0.0) + time.perf_counter() - started

        started = time.perf_counter()
        stacked = torch.stack(embeddings, dim=1)  # (B, modalities, embed_dim)
        if self.attention_scorer is not None:
            scores = self.attention_scorer(stacked).squeeze(-1)
            scores = scores.masked_fill(~mask, float("-inf"))
            attention = torch.softmax(scores, dim=1)
            fused = (attention.unsqueeze(-1) * stacked).sum(dim=1)
        else:
            presence = mask.to(stacked.dtype)
            attention = presence / presence.sum(dim=1, keepdim=True)
            fused = torch.cat([stacked.flatten(start_dim=1), presence], dim=1)
        logits = self.classifier(self.dropout(fused))
        probabilities = torch.softmax(logits / self.temperature, dim=1)
        if timings is not None:
            _synchronize(mask.device)
            timings["fusion_s"] = timings.get("fusion_s", 0.0) + time.perf_counter() - started
        return FusionOutput(logits=logits, attention=attention, probabilities=probabilities)

    def _check_mask(self, mask: torch.Tensor) -> torch.Tensor:
        if mask.ndim != 2 or mask.shape[1] != len(INPUT_MODALITIES):
            raise ValueError(
                f"mask must have shape (B, {len(INPUT_MODALITIES)}), got {tuple(mask.shape)}"
            )
        mask = mask.bool()
        empty_rows = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty_rows:
            raise ValueError(
                f"samples {empty_rows} have no modality: every hip needs a radiograph, "
                f"a CT or a note"
            )
        return mask

    def _embed(
        self,
        modality: InputModality,
        tensor: torch.Tensor | None,
        ndim: int,
        present: torch.Tensor,
        batch: int,
    ) -> torch.Tensor:
        projection = self.projections[modality.value]
        embed_dim = self.architecture.embed_dim
        if not bool(present.any()):
            weight = projection[1].weight
            return weight.new_zeros(batch, embed_dim)
        if tensor is None:
            raise ValueError(f"mask marks {modality.value} present but no {modality.value} tensor")
        if tensor.ndim != ndim or tensor.shape[0] != batch:
            raise ValueError(
                f"{modality.value} tensor must have {ndim} dimensions and batch size {batch}, "
                f"got shape {tuple(tensor.shape)}"
            )
        if modality is InputModality.TEXT and tensor.shape[1] != self.architecture.text_dim:
            raise ValueError(
                f"text embedding size must be {self.architecture.text_dim}, "
                f"got {tensor.shape[1]}: the note was encoded by another text model"
            )

        all_present = bool(present.all())
        selected = tensor if all_present else tensor[present]
        if modality is InputModality.RADIOGRAPH:
            features = self.radiograph_encoder(selected)
        elif modality is InputModality.CT:
            features = self.ct_encoder(selected)
        else:
            features = selected
        projected = projection(features)
        if all_present:
            return projected
        rows = present.nonzero().flatten()
        return projected.new_zeros(batch, embed_dim).index_copy(0, rows, projected)


def _projection(in_features: int, embed_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(in_features), nn.Linear(in_features, embed_dim))
