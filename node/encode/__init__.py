"""Encode analysis results as DICOM objects that go back into the source study.

:func:`build_sr` writes one Comprehensive 3D SR per study (TID 1500 Measurement
Report with one measurement group per hip) and :func:`build_secondary_captures`
writes the Grad-CAM overlays as Secondary Capture images. Both copy patient and
study from the source instances, reject sources of different patients, and
label the output of a non-clinical bundle "NOT FOR CLINICAL USE".
"""

from hipfuse.node.encode.labels import DeviceIdentity
from hipfuse.node.encode.sc import build_secondary_captures
from hipfuse.node.encode.sr import build_sr

__all__ = ["DeviceIdentity", "build_secondary_captures", "build_sr"]
