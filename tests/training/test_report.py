"""HTML report: self-contained, every section, figures equal to metrics.json, escaping."""

import json
import re

import numpy as np
import pytest
import structlog
from PIL import Image

from hipfuse.inference.model.config import IntendedUse, ModelPreset, make_bundle_config
from hipfuse.inference.types import HIP_CLASSES, HipClass, InputModality
from hipfuse.training.ablation import MODALITY_SUBSETS, AblationRuns, SubsetRun
from hipfuse.training.ablation_table import ablation_table, write_ablation
from hipfuse.training.attention_weights import write_attention
from hipfuse.training.cli import main
from hipfuse.training.evaluate import evaluate_predictions
from hipfuse.training.evaluation_files import write_evaluation
from hipfuse.training.fit_report import write_predictions
from hipfuse.training.localisation import (
    HipLocalisation,
    summarise_localisation,
    write_localisation,
)
from hipfuse.training.report import sample_attributions, write_report

SECTION_IDS = (
    "summary",
    "per-class",
    "roc",
    "decision-curves",
    "reliability",
    "confusion",
    "ablation",
    "attention",
    "localisation",
    "gallery",
    "model-card",
)
HOSTILE_HIP_ID = '<script>alert("x")</script>'
CLASS_NAMES = [c.value for c in HIP_CLASSES]


@pytest.fixture(autouse=True)
def reset_logging():
    yield
    structlog.reset_defaults()


def _probabilities(labels, rng, strength=1.5):
    logits = rng.normal(size=(labels.size, 4))
    logits[np.arange(labels.size), labels] += strength
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle")
    config = make_bundle_config(
        ModelPreset.DEMO, name="report-demo", version="9.9", intended_use=IntendedUse.DEMO
    )
    config = config.model_copy(
        update={"training_data": {"n_hips": 80, "n_patients": 40, "mode": "two_stage"}}
    )
    (folder / "bundle.json").write_text(config.model_dump_json(indent=2))
    return folder


def _write_samples(root):
    samples = root / "samples"
    (samples / "xray").mkdir(parents=True)
    (samples / "README.md").write_text(
        "| path | what it is | source | licence |\n|---|---|---|---|\n"
        "| `xray/pelvis_*.dcm` | A pelvis radiograph | Example archive, `x/*.dcm` | CC BY 4.0 |\n"
    )
    image = samples / "xray" / "pelvis_1.dcm"
    image.write_bytes(b"")
    return image


@pytest.fixture(scope="module")
def evaluation_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    out = root / "evaluation"
    rng = np.random.default_rng(3)
    labels = np.arange(40) % 4
    patients = [f"p{i // 2:02d}" for i in range(40)]
    hip_ids = [f"hip{i:02d}" for i in range(40)]
    probabilities = _probabilities(labels, rng)
    result = evaluate_predictions(
        labels=labels, patient_ids=patients, probabilities=probabilities, n_bootstrap=100
    )
    write_evaluation(result, out)
    write_predictions(out / "predictions.csv", hip_ids, patients, labels, probabilities, [""] * 40)
    attention = rng.dirichlet([1.0, 1.0, 1.0], size=40)
    write_attention(out / "attention.csv", hip_ids, labels, attention)

    rows = [
        HipLocalisation(
            hip_ids[i],
            patients[i],
            HIP_CLASSES[labels[i]],
            HipClass.OSTEOARTHRITIS,
            modality,
            bool(i % 3),
            0.4,
            0.1,
            50,
        )
        for i in range(40)
        if labels[i] != 0
        for modality in (InputModality.RADIOGRAPH, InputModality.CT)
    ]
    write_localisation(rows, summarise_localisation(rows, 2.0), out)

    (out / "gallery").mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(out / "gallery" / "one.png")
    sample = _write_samples(root)
    gallery = {
        "explained_class": "predicted",
        "entries": [
            {
                "hip_id": HOSTILE_HIP_ID,
                "label": "normal",
                "predicted": "osteoarthritis",
                "probability": 0.7,
                "attention": {"radiograph": 0.5, "ct": 0.3, "text": 0.2},
                "sources": [str(sample)],
                "images": [{"file": "gallery/one.png", "view": "radiograph"}],
            }
        ],
    }
    (out / "gallery.json").write_text(json.dumps(gallery))

    ablation_runs = AblationRuns(
        runs=[
            SubsetRun(subset, _probabilities(labels, rng, 1.0 + 0.2 * k), 30, 10, 2, 5, 0.8, 1.0)
            for k, subset in enumerate(MODALITY_SUBSETS)
        ],
        hip_ids=hip_ids,
        patient_ids=patients,
        labels=labels,
    )
    write_ablation(ablation_table(ablation_runs, n_bootstrap=50), ablation_runs, root / "ablation")
    return out


@pytest.fixture(scope="module")
def report_html(evaluation_dir, bundle_dir):
    path = write_report(
        evaluation_dir,
        bundle_dir,
        evaluation_dir.parent / "report.html",
        ablation_dir=evaluation_dir.parent / "ablation",
    )
    return path.read_text(encoding="utf-8")


def test_report_has_no_external_references(report_html):
    references = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', report_html)

    assert references
    assert all(ref.startswith(("#", "data:image/png;base64,")) for ref in references)
    assert "http://" not in report_html
    assert "https://" not in report_html
    assert "<link" not in report_html


@pytest.mark.parametrize("section_id", SECTION_IDS)
def test_report_contains_section(report_html, section_id):
    assert f'<section id="{section_id}">' in report_html


def _metric_value(metrics, key):
    parts = key.split("/")
    if parts[0] == "auc":
        return metrics["auc"][parts[1]]
    if parts[0] == "per_class":
        return metrics["per_class"][parts[1]][parts[2]]
    if parts[0] == "calibration":
        return metrics["calibration"][parts[1]]
    if parts[0] == "confusion_matrix":
        return metrics["confusion_matrix"]["counts"][int(parts[1])][int(parts[2])]
    return metrics[key]


def test_report_figures_equal_metrics_json(report_html, evaluation_dir):
    metrics = json.loads((evaluation_dir / "metrics.json").read_text())
    shown = re.findall(r'data-metric="([^"]+)">([^<]+)<', report_html)
    checked = [(key, text) for key, text in shown if not key.startswith(("ablation", "local"))]

    assert len(checked) >= 4 + 4 * 7 + 16
    for key, text in checked:
        expected = _metric_value(metrics, key)
        if isinstance(expected, int):
            assert int(text) == expected, key
        elif expected is None:
            assert text == "n/a", key
        else:
            assert text == f"{expected:.3f}", key


def test_report_ablation_rows_equal_ablation_json(report_html, evaluation_dir):
    table = json.loads((evaluation_dir.parent / "ablation" / "ablation.json").read_text())
    shown = dict(re.findall(r'data-metric="ablation/([^"]+)">([^<]+)<', report_html))

    assert len(shown) == 7 * 4
    for row in table["rows"]:
        assert shown[f"{row['subset']}/macro_auc"] == f"{row['macro_auc']:.3f}"


def test_report_escapes_strings(report_html):
    assert "<script" not in report_html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in report_html


def test_report_model_card_and_attribution(report_html):
    assert "DEMO MODEL: NOT FOR CLINICAL USE" in report_html
    assert "simulated cohort" in report_html
    assert "report-demo" in report_html
    assert "CC BY 4.0" in report_html
    assert "<code>x/*.dcm</code>" in report_html


def test_attributions_only_for_sample_files(tmp_path):
    sample = _write_samples(tmp_path)
    other = tmp_path / "cohort" / "pelvis_1.dcm"

    assert [a.licence for a in sample_attributions([str(sample)])] == ["CC BY 4.0"]
    assert sample_attributions([str(other)]) == []


def test_report_command_writes_file(evaluation_dir, bundle_dir, tmp_path, capsys):
    out = tmp_path / "nested" / "report.html"

    status = main(
        [
            "report",
            "--evaluation",
            str(evaluation_dir),
            "--bundle",
            str(bundle_dir),
            "--out",
            str(out),
        ]
    )

    assert status == 0
    assert out.is_file()
    assert str(out) in capsys.readouterr().out
    assert 'id="ablation"' in out.read_text()


def test_report_command_without_metrics_fails(bundle_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()

    status = main(
        [
            "report",
            "--evaluation",
            str(tmp_path / "empty"),
            "--bundle",
            str(bundle_dir),
            "--out",
            str(tmp_path / "report.html"),
        ]
    )

    assert status == 2
    assert "metrics.json not found" in capsys.readouterr().err
