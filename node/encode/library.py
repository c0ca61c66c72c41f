"""TID 1600 Image Library of the images that the SR's measurement groups reference.

highdicom's ``ImageLibrary`` requires Patient Orientation and Imager Pixel Spacing
on every projection radiograph, which many CR and DX files lack (the sample
radiographs have neither). This builder writes the TID 1602 descriptors every
image has (Modality, Frame of Reference UID, Rows, Columns) and adds the
radiograph's patient orientation when it is known.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from highdicom.sr import (
    CodeContentItem,
    ContainerContentItem,
    ContentSequence,
    ImageContentItem,
    NumContentItem,
    RelationshipTypeValues,
    TextContentItem,
    UIDRefContentItem,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

# Acquisition Modality (CID 29) of the modalities the node reads.
_MODALITY_CODES: Mapping[str, Code] = {
    "CT": codes.DCM.ComputedTomography,
    "CR": codes.DCM.ComputedRadiography,
    "DX": codes.DCM.DigitalRadiography,
}
_PIXELS = Code("{pixels}", "UCUM", "Pixels")  # UCUM annotation, as highdicom writes it
_SOURCE = Code("260753009", "SCT", "Source")  # SCT, the name highdicom gives library images
_ACQ = RelationshipTypeValues.HAS_ACQ_CONTEXT


def _descriptors(ds: Dataset, orientation: tuple[str, str] | None) -> list:
    items: list = []
    modality = _MODALITY_CODES.get(str(ds.get("Modality", "")))
    if modality is not None:
        items.append(CodeContentItem(codes.DCM.Modality, modality, relationship_type=_ACQ))
    if ds.get("FrameOfReferenceUID"):
        items.append(
            UIDRefContentItem(
                codes.DCM.FrameOfReferenceUID, ds.FrameOfReferenceUID, relationship_type=_ACQ
            )
        )
    for name, keyword in (
        (codes.DCM.PixelDataRows, "Rows"),
        (codes.DCM.PixelDataColumns, "Columns"),
    ):
        if keyword in ds:
            items.append(
                NumContentItem(name, int(ds[keyword].value), _PIXELS, relationship_type=_ACQ)
            )
    if orientation is not None:
        items.append(TextContentItem(codes.DCM.PatientOrientationRow, orientation[0], _ACQ))
        items.append(TextContentItem(codes.DCM.PatientOrientationColumn, orientation[1], _ACQ))
    return items


def image_library(
    images: Sequence[Dataset], radiograph_orientation: tuple[str, str] | None = None
) -> ContainerContentItem:
    """Build the Image Library container with one Image Library Group.

    Parameters
    ----------
    images
        Headers of the referenced images.
    radiograph_orientation
        Patient Orientation (row, column) of projection radiographs that do not
        carry it, as the radiograph reader determined it.
    """
    entries = []
    for ds in images:
        orientation = None
        if ds.get("Modality") != "CT":
            stored = ds.get("PatientOrientation")
            if stored is not None and len(stored) == 2:
                orientation = (str(stored[0]), str(stored[1]))
            else:
                orientation = radiograph_orientation
        entry = ImageContentItem(
            name=_SOURCE,
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
        entry.ContentSequence = ContentSequence(_descriptors(ds, orientation))
        entries.append(entry)
    group = ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup, relationship_type=RelationshipTypeValues.CONTAINS
    )
    group.ContentSequence = ContentSequence(entries)
    library = ContainerContentItem(
        name=codes.DCM.ImageLibrary, relationship_type=RelationshipTypeValues.CONTAINS
    )
    library.ContentSequence = ContentSequence([group])
    return library
