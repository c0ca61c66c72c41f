"""Result of a hip search: the regions found and the warnings about what was not."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

from hipfuse.inference.types import CTRegion, InputWarning, Laterality, RadiographRegion

RegionT = TypeVar("RegionT", RadiographRegion, CTRegion)


class RegionIssueCode(StrEnum):
    """Codes of the errors and warnings a hip search raises or adds."""

    HIP_NOT_FOUND = "hip_not_found"
    CROP_SIZE_FROM_ANATOMY = "crop_size_from_anatomy"
    RADIOGRAPH_ORIENTATION_UNSUPPORTED = "radiograph_orientation_unsupported"
    RADIOGRAPH_NOT_2D = "radiograph_not_2d"
    CT_NOT_3D = "ct_not_3d"
    CT_AFFINE_INVALID = "ct_affine_invalid"


@dataclass
class HipSearchResult(Generic[RegionT]):
    """Hips found on one image or volume.

    Attributes
    ----------
    regions
        One region per hip found, keyed by the patient's side. Both sides are
        present unless ``missing`` names the other.
    missing
        Reason per side that was not found. A search that finds no side at all
        raises ``InputError("hip_not_found", ...)`` instead of returning.
    warnings
        Problems that were handled and must stay visible: a side not found
        (code ``hip_not_found``) or a crop sized from anatomy because the pixel
        spacing was unknown (code ``crop_size_from_anatomy``).
    """

    regions: dict[Laterality, RegionT] = field(default_factory=dict)
    missing: dict[Laterality, str] = field(default_factory=dict)
    warnings: list[InputWarning] = field(default_factory=list)


def side_name(laterality: Laterality) -> str:
    """Return ``"right"`` or ``"left"`` for messages."""
    return "right" if laterality is Laterality.RIGHT else "left"
