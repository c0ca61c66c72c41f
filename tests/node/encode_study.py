"""A real study for the SR and SC encoder tests: sample radiograph, CT series and a result.

The radiograph is ``samples/xray/ap_pelvis_ddh_1.dcm``. The CT series is written
from ``samples/ct/pelvis_ct_3mm.nii.gz`` as one DICOM file per axial slice, with
the radiograph's patient and study, so both form one study as PACS would send
it. The result has plausible probabilities and Gaussian heat maps centred on
each hip; the model is not run.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from hipfuse.inference.model.config import BundleConfig, IntendedUse, TextModelReference
from hipfuse.inference.model.predict import HipPrediction
from hipfuse.inference.types import (
    ClinicalText,
    CTRegion,
    CTVolume,
    HipClass,
    InputModality,
    InputWarning,
    Laterality,
    Radiograph,
    RadiographRegion,
    SourceInstance,
)

try:
    from hipfuse.inference.pipeline import HipResult, StudyResult
except ImportError:  # the readers the pipeline imports are still being written

    @dataclass
    class HipResult:  # type: ignore[no-redef]
        prediction: HipPrediction
        radiograph_region: RadiographRegion | None
        ct_region: CTRegion | None
        radiograph_cam: np.ndarray | None = None
        ct_cam: np.ndarray | None = None

        @property
        def laterality(self) -> Laterality:
            return self.prediction.laterality

    @dataclass
    class StudyResult:  # type: ignore[no-redef]
        hips: list
        radiograph: Radiograph | None
        ct: CTVolume | None
        text: ClinicalText | None
        warnings: list = field(default_factory=list)
        timings_s: dict = field(default_factory=dict)


SAMPLES = Path(__file__).resolve().parents[2] / "samples"
RADIOGRAPH_PATH = SAMPLES / "xray" / "ap_pelvis_ddh_1.dcm"
NIFTI_PATH = SAMPLES / "ct" / "pelvis_ct_3mm.nii.gz"
TEXT_PATH = SAMPLES / "text" / "hip_osteoarthritis_left_mtsamples_258.txt"

# Femoral head centres on the canonical CT grid (k superior, j posterior,
# i patient left), read off the bone blobs of the lower slices of the sample.
CT_HEAD_INDEX = {Laterality.RIGHT: (20, 55, 34), Laterality.LEFT: (20, 55, 89)}

# Hip centres on the AP radiograph as fractions of (rows, columns): the patient's
# right hip is on the image left.
RADIOGRAPH_HEAD_FRACTION = {Laterality.RIGHT: (0.62, 0.30), Laterality.LEFT: (0.62, 0.70)}


def bundle_config(intended_use: str = "demo") -> BundleConfig:
    """Build a bundle configuration as a saved demo bundle has it, without weights."""
    return BundleConfig(
        name="hipfuse-demo",
        version="0.1.0",
        intended_use=IntendedUse(intended_use),
        text_model=TextModelReference(fingerprint="0" * 64),
        weights_sha256="ab" * 32,
    )


def canonical_ct() -> CTVolume:
    """Load the sample NIfTI as a canonical volume (superior, posterior, left), LPS affine."""
    image = nib.load(NIFTI_PATH)
    ras = np.asarray(image.dataobj).astype(np.float32)
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    voxels = np.ascontiguousarray(ras.transpose(2, 1, 0)[:, ::-1, ::-1])
    nx, ny, _ = ras.shape
    # canonical (k, j, i) -> RAS voxel (x, y, z) = (nx-1-i, ny-1-j, k)
    to_ras_voxel = np.array(
        [[0, 0, -1, nx - 1], [0, -1, 0, ny - 1], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64
    )
    ras_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    affine = ras_to_lps @ image.affine @ to_ras_voxel
    return CTVolume(voxels=voxels, affine=affine)


def write_ct_series(
    volume: CTVolume, reference: Dataset, folder: Path, patient_id: str | None = None
) -> list[Path]:
    """Write one CT Image Storage file per axial slice of a canonical volume.

    Patient and study come from ``reference``; ``patient_id`` overrides its
    Patient ID to make a series of another patient.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    frame_uid = generate_uid()
    spacing = volume.spacing_mm
    paths = []
    for k in range(volume.voxels.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "CT"
        ds.PatientName = reference.get("PatientName", "")
        ds.PatientID = patient_id if patient_id is not None else reference.get("PatientID", "")
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyInstanceUID = reference.StudyInstanceUID
        ds.StudyID = reference.get("StudyID", "")
        ds.StudyDate = "20240102"
        ds.StudyTime = "101500"
        ds.AccessionNumber = "ACC123"
        ds.ReferringPhysicianName = ""
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 2
        ds.InstanceNumber = k + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.Manufacturer = "test"
        ds.BodyPartExamined = "PELVIS"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        # Rows run posterior, columns run to the patient's left (LPS +y, +x).
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        position = volume.affine @ np.array([k, 0, 0, 1.0])
        ds.ImagePositionPatient = [round(float(v), 4) for v in position[:3]]
        ds.SliceThickness = spacing[0]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = volume.voxels.shape[1:]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.PixelData = volume.voxels[k].astype(np.int16).tobytes()
        path = folder / f"ct_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _gaussian(shape: tuple[int, ...], centre: tuple[float, ...], sigma: float) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    squared = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True))
    return np.exp(-squared / (2 * sigma**2)).astype(np.float32)


def _softmax(logits: list[float]) -> dict[HipClass, float]:
    values = np.exp(np.array(logits, dtype=np.float64) - max(logits))
    values /= values.sum()
    return {c: float(v) for c, v in zip(HipClass, values, strict=True)}


@dataclass
class EncodeStudy:
    """Everything an encoder test needs."""

    radiograph_dataset: Dataset
    ct_datasets: list[Dataset]
    result: StudyResult

    @property
    def sources(self) -> list[Dataset]:
        """Source datasets in the order the node passes them: radiograph, then CT."""
        return [self.radiograph_dataset, *self.ct_datasets]


def build_study(tmp_path: Path, with_text: bool = True) -> EncodeStudy:
    """Write the CT series and build the result of a two-hip study."""
    radiograph_ds = pydicom.dcmread(RADIOGRAPH_PATH)
    rgb = radiograph_ds.pixel_array.astype(np.float32) / 255.0
    pixels = rgb.mean(axis=-1)
    radiograph = Radiograph(
        pixels=pixels,
        pixel_spacing_mm=None,
        spacing_source="none",
        row_direction="L",
        column_direction="F",
        orientation_source="assumed_ap",
        instance=SourceInstance(radiograph_ds.SOPClassUID, radiograph_ds.SOPInstanceUID),
    )
    volume = canonical_ct()
    ct_paths = write_ct_series(volume, radiograph_ds, tmp_path / "ct")
    ct_datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct_paths]

    logits = {Laterality.RIGHT: [2.0, 0.3, -0.5, 0.1], Laterality.LEFT: [0.2, 2.5, 0.4, -1.0]}
    hips = []
    for laterality in (Laterality.LEFT, Laterality.RIGHT):  # reversed on purpose
        rows, columns = pixels.shape
        fraction = RADIOGRAPH_HEAD_FRACTION[laterality]
        centre = (fraction[0] * rows, fraction[1] * columns)
        half = 0.2 * columns
        region = RadiographRegion(
            laterality=laterality,
            crop=np.zeros((64, 64), np.float32),
            box=(centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half),
            mirrored=laterality is Laterality.LEFT,
            centre=centre,
        )
        head_index = CT_HEAD_INDEX[laterality]
        centre_mm = tuple(float(v) for v in (volume.affine @ np.array([*head_index, 1.0]))[:3])
        ct_region = CTRegion(
            laterality=laterality,
            crop=np.zeros((8, 8, 8), np.float32),
            affine=np.eye(4),
            centre_mm=centre_mm,
            mirrored=laterality is Laterality.LEFT,
        )
        probabilities = _softmax(logits[laterality])
        prediction = HipPrediction(
            laterality=laterality,
            probabilities=probabilities,
            predicted=max(probabilities, key=probabilities.get),
            attention={
                InputModality.RADIOGRAPH: 0.5,
                InputModality.CT: 0.3,
                InputModality.TEXT: 0.2 if with_text else 0.0,
            },
            available_modalities=tuple(InputModality),
        )
        # Peak of the CT map 2 voxels above the head centre, so the planes differ
        # from the located centre.
        peak = (head_index[0] + 2, head_index[1], head_index[2])
        hips.append(
            HipResult(
                prediction=prediction,
                radiograph_region=region,
                ct_region=ct_region,
                radiograph_cam=_gaussian(pixels.shape, centre, 0.06 * columns),
                ct_cam=_gaussian(volume.voxels.shape, peak, 4.0),
            )
        )
    text = ClinicalText(TEXT_PATH.read_text(encoding="utf-8")) if with_text else None
    warnings = [InputWarning("pixel_spacing_placeholder", "Pixel Spacing 1.0 is a placeholder")]
    result = StudyResult(hips, radiograph, volume, text, warnings)
    return EncodeStudy(radiograph_ds, ct_datasets, result)


def run_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a DICOM command-line tool and capture its output."""
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)


def tool_available(name: str) -> bool:
    """Return whether a command-line tool is on PATH."""
    return shutil.which(name) is not None
