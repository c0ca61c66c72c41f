"""hipfuse-analyze on the real sample study, run as a user runs it.

The bundle has seeded random weights: these tests check the command's
plumbing and outputs, not the model's accuracy, which the training tests
measure on simulated cohorts.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from hipfuse.inference.model.bundle import build_untrained_bundle, save_bundle
from hipfuse.inference.model.config import IntendedUse, ModelPreset, make_bundle_config
from hipfuse.inference.types import HipClass

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
RADIOGRAPH = SAMPLES / "xray" / "ap_pelvis_ddh_1.dcm"
CT_NIFTI = SAMPLES / "ct" / "pelvis_ct_3mm.nii.gz"
NOTE = SAMPLES / "text" / "hip_osteoarthritis_left_mtsamples_258.txt"
ANALYZE = Path(sys.executable).with_name("hipfuse-analyze")


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    config = make_bundle_config(
        ModelPreset.DEMO, name="cli-test", version="0.0.1", intended_use=IntendedUse.DEMO
    )
    out = tmp_path_factory.mktemp("bundle") / "demo"
    save_bundle(build_untrained_bundle(config, seed=3).model, config, out)
    return out


def run_analyze(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run(
        [str(ANALYZE), *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )


@pytest.fixture(scope="module")
def full_study(bundle_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    completed = run_analyze(
        "--bundle", bundle_dir, "--radiograph", RADIOGRAPH, "--ct", CT_NIFTI,
        "--text", NOTE, "--out", out, "--log-level", "WARNING",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    return out, completed, json.loads((out / "result.json").read_text())


def test_analyze_reports_both_hips(full_study):
    _, _, document = full_study
    assert [hip["laterality"] for hip in document["hips"]] == ["R", "L"]
    for hip in document["hips"]:
        assert sum(hip["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert hip["predicted_class"] == max(hip["probabilities"], key=hip["probabilities"].get)
        assert set(hip["attention"]) == {"radiograph", "ct", "text"}
        assert sum(hip["attention"].values()) == pytest.approx(1.0, abs=1e-5)
        assert min(hip["attention"].values()) > 0


def test_analyze_marks_demo_output(full_study):
    _, completed, document = full_study
    assert document["not_for_clinical_use"] is True
    assert "NOT FOR CLINICAL USE" in completed.stdout
    assert document["model"]["intended_use"] == "demo"


def test_analyze_prints_class_display_names(full_study):
    _, completed, document = full_study
    for hip in document["hips"]:
        side = "right" if hip["laterality"] == "R" else "left"
        name = HipClass(hip["predicted_class"]).display_name
        assert f"{side} hip: {name} (p=" in completed.stdout


def test_analyze_right_hip_on_image_left(full_study):
    """Standard AP without Patient Orientation: the patient's right is on image left."""
    _, _, document = full_study
    columns = {hip["laterality"]: hip["radiograph_centre_px"][1] for hip in document["hips"]}
    width = pydicom.dcmread(RADIOGRAPH, stop_before_pixels=True).Columns
    assert columns["R"] < width / 2 < columns["L"]


def test_analyze_ct_left_hip_has_larger_x(full_study):
    """LPS x grows toward the patient's left."""
    _, _, document = full_study
    x = {hip["laterality"]: hip["ct_centre_mm"][0] for hip in document["hips"]}
    assert x["L"] > x["R"]


def test_analyze_warns_about_sample_quirks(full_study):
    _, _, document = full_study
    codes = {warning["code"] for warning in document["warnings"]}
    assert "pixel_spacing_placeholder" in codes
    assert "patient_orientation_assumed" in codes


def test_analyze_writes_overlays(full_study):
    out, _, document = full_study
    expected = {
        f"{kind}_{side}{plane}.png"
        for side in ("R", "L")
        for kind, plane in [("radiograph", "")]
        + [("ct", f"_{p}") for p in ("axial", "coronal", "sagittal")]
    }
    assert set(document["overlays"]) == expected
    for name in expected:
        pixels = np.asarray(Image.open(out / name))
        assert pixels.ndim == 3
        assert pixels.shape[2] == 3


def test_analyze_json_has_no_patient_id(full_study):
    out, _, _ = full_study
    patient_id = str(pydicom.dcmread(RADIOGRAPH, stop_before_pixels=True).PatientID)
    assert patient_id not in (out / "result.json").read_text()


def test_analyze_text_only(bundle_dir, tmp_path):
    """Text alone is a valid input: the image branches are masked out."""
    completed = run_analyze("--bundle", bundle_dir, "--text", NOTE, "--out", tmp_path)
    assert completed.returncode == 0, completed.stderr
    document = json.loads((tmp_path / "result.json").read_text())
    assert [hip["laterality"] for hip in document["hips"]] == ["R", "L"]
    for hip in document["hips"]:
        assert hip["attention"]["text"] == pytest.approx(1.0)
        assert hip["attention"]["radiograph"] == 0.0
    assert document["overlays"] == []


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        pytest.param("truncate", "weights", id="truncated weights"),
        pytest.param("remove_config", "bundle.json", id="missing config"),
    ],
)
def test_analyze_refuses_bad_bundle(bundle_dir, tmp_path, damage, expected):
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    if damage == "truncate":
        weights = broken / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        (broken / "bundle.json").unlink()
    completed = run_analyze(
        "--bundle", broken, "--radiograph", RADIOGRAPH, "--out", tmp_path / "out"
    )
    assert completed.returncode == 3
    assert expected in completed.stderr


def test_analyze_refuses_mixed_patients(bundle_dir, tmp_path):
    other = tmp_path / "other_patient_ct"
    from hipfuse.inference.readers.ct import reorient_to_canonical
    from hipfuse.inference.readers.dicom_series_writer import write_ct_series
    from hipfuse.inference.readers.nifti import read_nifti_ct
    from hipfuse.inference.types import SourceIdentity

    write_ct_series(
        reorient_to_canonical(read_nifti_ct(CT_NIFTI)), other, SourceIdentity(patient_id="OTHER")
    )
    completed = run_analyze(
        "--bundle", bundle_dir, "--radiograph", RADIOGRAPH, "--ct", other, "--out", tmp_path / "o"
    )
    assert completed.returncode == 2
    assert "Patient ID differs" in completed.stderr
    assert "OTHER" not in completed.stderr


def test_analyze_requires_an_input(bundle_dir, tmp_path):
    completed = run_analyze("--bundle", bundle_dir, "--out", tmp_path)
    assert completed.returncode == 2
    assert "at least one input" in completed.stderr


def test_analyze_help_is_fast_and_lazy():
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", str(ANALYZE), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0
    assert "--radiograph" in completed.stdout
    assert "torch" not in completed.stderr


def test_analyze_masks_ct_without_hips(bundle_dir, tmp_path):
    """An upper-abdomen CT shows no hip: the radiograph is analysed alone."""
    completed = run_analyze(
        "--bundle", bundle_dir, "--radiograph", RADIOGRAPH,
        "--ct", SAMPLES / "ct" / "abdomen_ct_dicom_j2k", "--out", tmp_path, "--no-gradcam",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    document = json.loads((tmp_path / "result.json").read_text())
    assert "input_masked" in {warning["code"] for warning in document["warnings"]}
    for hip in document["hips"]:
        assert hip["attention"]["ct"] == 0.0
        assert hip["attention"]["radiograph"] == pytest.approx(1.0)
