"""From a simulated cohort to the HTML report: evaluate writes localisation and gallery."""

import json
import re

import pytest
import structlog

from hipfuse.inference.model.config import IntendedUse, ModelPreset, make_bundle_config
from hipfuse.training.cli import main
from hipfuse.training.cohort import load_cohort
from hipfuse.training.fit import fit
from hipfuse.training.simulate import simulate_cohort


@pytest.fixture(autouse=True)
def reset_logging():
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    cohort = load_cohort(simulate_cohort(root / "cohort", 8, seed=2, workers=2))
    config = make_bundle_config(
        ModelPreset.DEMO, name="pipeline", version="0.0.1", intended_use=IntendedUse.DEMO
    )
    fit(
        cohort,
        config,
        root / "bundle",
        mode="two_stage",
        epochs=2,
        batch_size=8,
        seed=0,
        n_bootstrap=20,
        progress=False,
        workers=2,
        cache_dir=root / "cache",
    )
    return root, cohort


def test_evaluate_then_report(trained, capsys):
    root, cohort = trained

    evaluated = main(
        [
            "evaluate",
            "--bundle",
            str(root / "bundle"),
            "--manifest",
            str(cohort.manifest_path),
            "--out",
            str(root / "evaluation"),
            "--bootstrap",
            "20",
            "--cache-dir",
            str(root / "cache"),
            "--pointing-tolerance-mm",
            "4",
            "--gallery-per-class",
            "1",
        ]
    )
    reported = main(
        [
            "report",
            "--evaluation",
            str(root / "evaluation"),
            "--bundle",
            str(root / "bundle"),
            "--out",
            str(root / "report.html"),
        ]
    )

    assert evaluated == 0
    assert reported == 0
    output = capsys.readouterr().out
    assert "localisation (Grad-CAM of the predicted class, tolerance 4 mm)" in output
    summary = json.loads((root / "evaluation" / "localisation.json").read_text())
    assert summary["tolerance_mm"] == 4.0
    assert summary["modalities"]["ct"]["all"]["n_hips"] > 0
    gallery = json.loads((root / "evaluation" / "gallery.json").read_text())
    labels = {entry["label"] for entry in gallery["entries"]}
    assert len(gallery["entries"]) == len(labels)
    attention_lines = (root / "evaluation" / "attention.csv").read_text().splitlines()
    assert len(attention_lines) == 1 + len(cohort.hips)
    html = (root / "report.html").read_text()
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) >= len(gallery["entries"])
    assert 'data-metric="localisation/ct/all abnormal/pointing_game"' in html
    assert "Sample data shown" not in html


def test_evaluate_skips_localisation_on_request(trained, capsys):
    root, cohort = trained

    status = main(
        [
            "evaluate",
            "--bundle",
            str(root / "bundle"),
            "--manifest",
            str(cohort.manifest_path),
            "--out",
            str(root / "plain"),
            "--bootstrap",
            "20",
            "--cache-dir",
            str(root / "cache"),
            "--no-localisation",
            "--gallery-per-class",
            "0",
        ]
    )

    assert status == 0
    assert not (root / "plain" / "localisation.json").exists()
    assert not (root / "plain" / "gallery.json").exists()
    assert "localisation" not in capsys.readouterr().out
