"""Radiograph reader: real DX samples, and edited copies for each grey-level and geometry rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from hipfuse.inference.readers import dicom_common
from hipfuse.inference.readers.radiograph import read_radiograph
from hipfuse.inference.types import InputError

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "xray"
SAMPLE_FILES = sorted(SAMPLES.glob("*.dcm"))


def codes(radiograph) -> list[str]:
    return [warning.code for warning in radiograph.warnings]


def write_dx(path: Path, pixels: np.ndarray, **attributes) -> Path:
    """Write an uncompressed DX image (greyscale uint16 or RGB uint8) with the given attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "TEST-1"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape[:2]
    if pixels.ndim == 3:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
    ds.PixelRepresentation = 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def gradient_12bit(rows: int = 32, columns: int = 4096) -> np.ndarray:
    """Each column contains its own index, so column c has the stored value c (0..4095)."""
    return np.tile(np.arange(columns, dtype=np.uint16), (rows, 1))


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=[p.stem for p in SAMPLE_FILES])
def test_real_sample_is_decoded(path):
    radiograph = read_radiograph(path)

    assert radiograph.pixels.shape == (331, 331)
    assert radiograph.pixels.dtype == np.float32
    assert radiograph.pixels.min() == 0.0
    assert radiograph.pixels.max() == 1.0
    assert radiograph.pixel_spacing_mm is None
    assert radiograph.spacing_source == "none"
    assert "pixel_spacing_placeholder" in codes(radiograph)
    assert (radiograph.row_direction, radiograph.column_direction) == ("L", "F")
    assert radiograph.orientation_source == "assumed_ap"
    assert "patient_orientation_assumed" in codes(radiograph)
    assert radiograph.identity.patient_id
    assert radiograph.identity.modality == "DX"
    assert radiograph.instance.sop_class_uid == pydicom.uid.ComputedRadiographyImageStorage
    assert radiograph.instance.sop_instance_uid


def test_real_sample_luminance_ordering():
    # The samples are grey stored as RGB: scaled luminance must follow the stored red channel.
    ds = pydicom.dcmread(SAMPLE_FILES[0])
    red = ds.pixel_array[..., 0].astype(np.float64)
    pixels = read_radiograph(SAMPLE_FILES[0]).pixels
    interior = (pixels > 0) & (pixels < 1)
    assert np.corrcoef(red[interior], pixels[interior])[0, 1] > 0.9999


def test_flipped_copy_with_patient_orientation(tmp_path):
    ds = pydicom.dcmread(SAMPLE_FILES[0])
    flipped = np.ascontiguousarray(ds.pixel_array[:, ::-1, :])
    path = write_dx(tmp_path / "flipped.dcm", flipped, PatientOrientation=["R", "F"])

    original = read_radiograph(SAMPLE_FILES[0])
    radiograph = read_radiograph(path)

    assert (radiograph.row_direction, radiograph.column_direction) == ("R", "F")
    assert radiograph.orientation_source == "PatientOrientation"
    assert "patient_orientation_assumed" not in codes(radiograph)
    np.testing.assert_allclose(radiograph.pixels, original.pixels[:, ::-1], atol=1e-6)


def test_ybr_full_matches_rgb(tmp_path):
    ds = pydicom.dcmread(SAMPLE_FILES[1])
    rgb = ds.pixel_array
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    path = write_dx(tmp_path / "ybr.dcm", ybr, PhotometricInterpretation="YBR_FULL")

    pixels = read_radiograph(path).pixels

    np.testing.assert_allclose(pixels, read_radiograph(SAMPLE_FILES[1]).pixels, atol=0.02)


def test_monochrome1_is_inverted(tmp_path):
    stored = gradient_12bit()
    monochrome2 = write_dx(tmp_path / "m2.dcm", stored)
    monochrome1 = write_dx(
        tmp_path / "m1.dcm", 4095 - stored, PhotometricInterpretation="MONOCHROME1"
    )

    bright_is_high = read_radiograph(monochrome2).pixels
    inverted = read_radiograph(monochrome1).pixels

    assert bright_is_high[0, -1] == 1.0
    assert inverted[0, -1] == 1.0
    np.testing.assert_allclose(inverted, bright_is_high, atol=1e-6)


@pytest.mark.parametrize(
    ("attributes", "column_at_half"),
    [
        pytest.param({"WindowCenter": 2048, "WindowWidth": 1025}, 2048, id="window"),
        pytest.param(
            {"WindowCenter": [1024, 3000], "WindowWidth": [513, 100]}, 1024, id="first-window"
        ),
        pytest.param(
            {
                "RescaleSlope": 2,
                "RescaleIntercept": -100,
                "WindowCenter": 2 * 2048 - 100,
                "WindowWidth": 2049,
            },
            2048,
            id="rescale-then-window",
        ),
    ],
)
def test_window_maps_to_unit_range(tmp_path, attributes, column_at_half):
    path = write_dx(tmp_path / "window.dcm", gradient_12bit(), **attributes)

    row = read_radiograph(path).pixels[0]

    assert row[0] == 0.0
    assert row[-1] == 1.0
    # LINEAR windowing (PS3.3 C.11.2.1.2.1) puts center - 0.5 at the middle of the output.
    assert row[column_at_half] == pytest.approx(0.5, abs=2e-3)
    assert np.all(np.diff(row) >= 0)


def test_voi_lut_sequence_is_preferred(tmp_path):
    item = Dataset()
    # 4096 entries from stored value 0, 12 bits each: a reversed ramp.
    item.LUTDescriptor = [4096, 0, 12]
    item.add_new("LUTData", "US", list(range(4095, -1, -1)))
    path = write_dx(
        tmp_path / "lut.dcm",
        gradient_12bit(),
        VOILUTSequence=[item],
        WindowCenter=2048,
        WindowWidth=4096,
    )

    row = read_radiograph(path).pixels[0]

    assert row[0] == 1.0
    assert row[-1] == 0.0


def test_no_voi_uses_percentiles(tmp_path):
    path = write_dx(tmp_path / "plain.dcm", gradient_12bit())

    row = read_radiograph(path).pixels[0]

    # The 0.5th and 99.5th percentiles of 0..4095 map to 0 and 1.
    assert row[20] == 0.0
    assert row[4075] == 1.0
    assert row[2048] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize(
    ("attributes", "expected_spacing", "expected_source", "expected_codes"),
    [
        pytest.param(
            {"PixelSpacing": [0.143, 0.139]}, (0.143, 0.139), "PixelSpacing", [], id="calibrated"
        ),
        pytest.param(
            {"ImagerPixelSpacing": [0.15, 0.15]},
            (0.15, 0.15),
            "ImagerPixelSpacing",
            ["pixel_spacing_at_detector"],
            id="imager-only",
        ),
        pytest.param(
            {"PixelSpacing": [1.0, 1.0], "ImagerPixelSpacing": [0.15, 0.15]},
            (0.15, 0.15),
            "ImagerPixelSpacing",
            ["pixel_spacing_placeholder", "pixel_spacing_at_detector"],
            id="placeholder-then-imager",
        ),
        pytest.param(
            {"PixelSpacing": [0.0, 0.0]}, None, "none", ["pixel_spacing_invalid"], id="zero"
        ),
        pytest.param(
            {"PixelSpacing": [-0.1, 0.1]}, None, "none", ["pixel_spacing_invalid"], id="negative"
        ),
        pytest.param(
            {"PixelSpacing": [0.01, 0.01]},
            None,
            "none",
            ["pixel_spacing_placeholder"],
            id="too-small",
        ),
        pytest.param({}, None, "none", ["pixel_spacing_missing"], id="missing"),
    ],
)
def test_pixel_spacing_rules(
    tmp_path, attributes, expected_spacing, expected_source, expected_codes
):
    path = write_dx(tmp_path / "spacing.dcm", gradient_12bit(), **attributes)

    radiograph = read_radiograph(path)

    assert radiograph.pixel_spacing_mm == expected_spacing
    assert radiograph.spacing_source == expected_source
    spacing_codes = [code for code in codes(radiograph) if code.startswith("pixel_spacing")]
    assert spacing_codes == expected_codes


@pytest.mark.parametrize(
    ("attributes", "expected", "expected_source", "expected_code"),
    [
        pytest.param(
            {"PatientOrientation": ["L", "F"]}, ("L", "F"), "PatientOrientation", None, id="ap"
        ),
        pytest.param(
            {"PatientOrientation": ["R", "F"]}, ("R", "F"), "PatientOrientation", None, id="flipped"
        ),
        pytest.param(
            {"PatientOrientation": ["F", "R"]}, ("F", "R"), "PatientOrientation", None, id="rotated"
        ),
        pytest.param(
            {"PatientOrientation": ["LF", "FR"]},
            ("L", "F"),
            "PatientOrientation",
            "patient_orientation_oblique",
            id="compound",
        ),
        pytest.param(
            {"ViewPosition": "PA"}, ("R", "F"), "assumed_pa", "patient_orientation_assumed", id="pa"
        ),
        pytest.param(
            {"ViewPosition": "AP"},
            ("L", "F"),
            "assumed_ap",
            "patient_orientation_assumed",
            id="ap-view",
        ),
    ],
)
def test_patient_orientation_rules(tmp_path, attributes, expected, expected_source, expected_code):
    path = write_dx(tmp_path / "orientation.dcm", gradient_12bit(), **attributes)

    radiograph = read_radiograph(path)

    assert (radiograph.row_direction, radiograph.column_direction) == expected
    assert radiograph.orientation_source == expected_source
    orientation_codes = [c for c in codes(radiograph) if c.startswith("patient_orientation")]
    assert orientation_codes == ([expected_code] if expected_code else [])


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(["L", "R"], id="same-axis"),
        pytest.param(["LR", "F"], id="opposite-letters"),
        pytest.param(["X", "F"], id="unknown-letter"),
        pytest.param(["L", "F", "A"], id="three-values"),
    ],
)
def test_invalid_patient_orientation_is_rejected(tmp_path, value):
    path = write_dx(tmp_path / "bad.dcm", gradient_12bit(), PatientOrientation=value)

    with pytest.raises(InputError, match="Patient Orientation") as raised:
        read_radiograph(path)

    assert raised.value.code == "patient_orientation_invalid"


def test_multiframe_uses_first_frame(tmp_path):
    frames = np.stack([gradient_12bit(), 4095 - gradient_12bit()])
    path = write_dx(tmp_path / "frames.dcm", frames[0])
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = frames.tobytes()
    ds.save_as(path)

    radiograph = read_radiograph(path)

    assert radiograph.pixels.shape == frames.shape[1:]
    assert radiograph.pixels[0, -1] == 1.0
    assert "multiframe_first_frame" in codes(radiograph)


def test_png_16bit(tmp_path):
    path = tmp_path / "research.png"
    Image.fromarray(gradient_12bit() * 16).save(path)
    assert Image.open(path).mode.startswith("I")

    radiograph = read_radiograph(path)

    assert radiograph.pixels.dtype == np.float32
    assert radiograph.pixels.shape == (32, 4096)
    assert radiograph.pixels[0, 2048] == pytest.approx(0.5, abs=1e-3)
    assert radiograph.pixel_spacing_mm is None
    assert radiograph.instance is None
    assert radiograph.orientation_source == "assumed_ap"
    assert codes(radiograph) == ["pixel_spacing_missing", "patient_orientation_assumed"]


def test_jpeg_rgb(tmp_path):
    path = tmp_path / "research.jpg"
    rgb = pydicom.dcmread(SAMPLE_FILES[2]).pixel_array
    Image.fromarray(rgb).save(path, quality=95)

    radiograph = read_radiograph(path)

    expected = read_radiograph(SAMPLE_FILES[2]).pixels
    assert radiograph.pixels.shape == expected.shape
    assert np.abs(radiograph.pixels - expected).mean() < 0.02


def test_missing_codec_names_package(tmp_path, monkeypatch):
    class UnavailableDecoder:
        is_available = False

    monkeypatch.setattr(dicom_common, "get_decoder", lambda uid: UnavailableDecoder())

    with pytest.raises(InputError, match="pip install pylibjpeg-openjpeg") as raised:
        read_radiograph(SAMPLE_FILES[0])

    assert raised.value.code == "codec_missing"
    assert "1.2.840.10008.1.2.4.91" in str(raised.value)


@pytest.mark.parametrize(
    ("content", "name", "code"),
    [
        pytest.param(b"not an image", "note.txt", "unsupported_file", id="text-file"),
        pytest.param(None, "absent.dcm", "file_not_found", id="missing"),
    ],
)
def test_bad_files_are_rejected(tmp_path, content, name, code):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)

    with pytest.raises(InputError) as raised:
        read_radiograph(path)

    assert raised.value.code == code


def test_ct_slice_is_not_a_radiograph():
    ct_file = sorted((SAMPLES.parent / "ct" / "abdomen_ct_dicom_j2k").glob("*.dcm"))[0]

    with pytest.raises(InputError, match="Modality CT") as raised:
        read_radiograph(ct_file)

    assert raised.value.code == "unsupported_file"
