"""Device identity of the node and the intended-use labels of its outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from importlib import metadata
from typing import Protocol

MANUFACTURER = "hipfuse"

CLINICAL_USE = "clinical"
"""``IntendedUse`` value of a bundle that may be used for patient care."""


def _package_version() -> str:
    try:
        return metadata.version("hipfuse")
    except metadata.PackageNotFoundError:
        return "unknown"


class BundleIdentity(Protocol):
    """The bundle configuration fields that the encoders read (``BundleConfig`` has them)."""

    name: str
    version: str
    intended_use: Enum
    weights_sha256: str
    class_names: list[str]


@dataclass(frozen=True)
class DeviceIdentity:
    """The node that writes the outputs, as the SR Device observer and General Equipment.

    Attributes
    ----------
    device_uid
        Device Observer UID (TID 1004); a UID fixed for one installation of the
        node, or ``None`` to derive one from the serial number.
    serial_number
        Device Serial Number (0018,1000) and Device Observer Serial Number.
    software_version
        Software Versions (0018,1020): the hipfuse package version by default.
    institution_name
        Institution Name (0008,0080), or ``None`` to leave it out.
    station_name
        Station Name (0008,1010) and Device Observer Name, or ``None``.
    """

    device_uid: str | None = None
    serial_number: str = "0"
    software_version: str = field(default_factory=_package_version)
    institution_name: str | None = None
    station_name: str | None = None


def is_clinical(bundle: BundleIdentity) -> bool:
    """Return whether the bundle is cleared for clinical use."""
    return str(bundle.intended_use.value) == CLINICAL_USE


def not_for_clinical_use_statement(bundle: BundleIdentity) -> str | None:
    """Sentence that every output of a non-clinical bundle carries, or ``None`` if clinical."""
    if is_clinical(bundle):
        return None
    use = str(bundle.intended_use.value)
    return (
        f"NOT FOR CLINICAL USE: produced by the {use} model {bundle.name} {bundle.version} "
        "of hipfuse, which is not cleared for diagnosis. Do not base patient care on it."
    )


def labelled_description(base: str, bundle: BundleIdentity) -> str:
    """Append " - NOT FOR CLINICAL USE" to a Series Description for a non-clinical bundle."""
    if is_clinical(bundle):
        return base
    return f"{base} - NOT FOR CLINICAL USE"
