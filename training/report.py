"""One self-contained HTML report of an evaluation, with ablation, attention, Grad-CAM, model card.

:func:`write_report` reads what ``hipfuse-train evaluate --bundle`` wrote
(``metrics.json`` and, when present, ``predictions.csv``, ``attention.csv``,
``localisation.json`` and ``gallery.json`` with its PNG files), the
``ablation.json`` of ``hipfuse-train ablate`` and the bundle's ``bundle.json``.
The file opens offline: CSS is inline, charts are inline SVG and images are
base64 PNG, so it references no other file and no network address.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from hipfuse.inference.model.bundle import read_bundle_config
from hipfuse.inference.model.config import BundleConfig, IntendedUse
from hipfuse.training.report_sections import (
    ablation_section,
    attention_section,
    confusion_section,
    decision_curve_section,
    esc,
    fmt,
    gallery_section,
    localisation_section,
    per_class_section,
    reliability_section,
    roc_section,
    section,
    summary_section,
)

log = structlog.get_logger(__name__)

METRICS_FILE_NAME = "metrics.json"
PREDICTIONS_FILE_NAME = "predictions.csv"
SAMPLES_README_NAME = "README.md"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222;
       line-height: 1.4; padding: 0 1em; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.banner { background: #b00020; color: #fff; padding: 0.6em 1em; font-weight: bold; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td .ci { color: #555; font-size: 0.9em; }
table.matrix td { text-align: right; min-width: 4em; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
svg.chart { background: #fff; font-size: 11px; }
svg .chart-title { font-weight: bold; font-size: 12px; }
svg .tick, svg .legend { font-size: 10px; }
figure.gallery-item { display: inline-block; margin: 0.5em; vertical-align: top;
                      max-width: 100%; }
figure.gallery-item img { max-width: 384px; margin-right: 0.3em; }
figcaption { font-size: 0.9em; max-width: 60em; }
footer { margin-top: 3em; font-size: 0.85em; color: #444; border-top: 1px solid #ccc; }
"""


@dataclass(frozen=True)
class Attribution:
    """One row of a sample data README: what a shown file is, where it came from, its licence."""

    path: str
    description: str
    source: str
    licence: str


@dataclass
class ReportInputs:
    """Everything the report shows, loaded from the evaluation, ablation and bundle folders."""

    evaluation_dir: Path
    metrics: dict[str, Any]
    config: BundleConfig
    predictions: Any | None = None
    attention: dict[str, np.ndarray] | None = None
    localisation: dict[str, Any] | None = None
    gallery: dict[str, Any] | None = None
    ablation: dict[str, Any] | None = None


class ReportError(ValueError):
    """A folder that does not contain what the report needs; the message names the file."""


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ReportError(
            f"{path} is not valid JSON ({error}): rerun the command that wrote it"
        ) from error


def load_report_inputs(
    evaluation_dir: Path | str, bundle_dir: Path | str, ablation_dir: Path | str | None = None
) -> ReportInputs:
    """Read the files of an evaluation folder, an optional ablation folder and the bundle config.

    Raises
    ------
    ReportError
        When ``metrics.json`` or ``ablation.json`` is missing or invalid.
    """
    from hipfuse.training.attention_weights import ATTENTION_FILE_NAME, read_attention
    from hipfuse.training.localisation import SUMMARY_FILE_NAME
    from hipfuse.training.predictions_io import read_predictions_csv
    from hipfuse.training.report_gallery import GALLERY_INDEX_NAME

    evaluation_dir = Path(evaluation_dir)
    metrics = _read_json(evaluation_dir / METRICS_FILE_NAME)
    if metrics is None:
        raise ReportError(
            f"{evaluation_dir / METRICS_FILE_NAME} not found: pass the --out folder of "
            "hipfuse-train evaluate"
        )
    inputs = ReportInputs(evaluation_dir, metrics, read_bundle_config(bundle_dir))
    predictions_path = evaluation_dir / PREDICTIONS_FILE_NAME
    if predictions_path.is_file():
        by_model = read_predictions_csv(predictions_path, metrics["class_names"])
        inputs.predictions = next(iter(by_model.values()))
    if (evaluation_dir / ATTENTION_FILE_NAME).is_file():
        inputs.attention = read_attention(evaluation_dir / ATTENTION_FILE_NAME)
    inputs.localisation = _read_json(evaluation_dir / SUMMARY_FILE_NAME)
    inputs.gallery = _read_json(evaluation_dir / GALLERY_INDEX_NAME)
    if ablation_dir is not None:
        from hipfuse.training.ablation_table import TABLE_JSON_NAME

        inputs.ablation = _read_json(Path(ablation_dir) / TABLE_JSON_NAME)
        if inputs.ablation is None:
            raise ReportError(
                f"{Path(ablation_dir) / TABLE_JSON_NAME} not found: pass the --out folder of "
                "hipfuse-train ablate"
            )
    return inputs


# --- Sample data attributions -----------------------------------------------------


def _readme_rows(readme: Path) -> list[Attribution]:
    """Parse the ``| path | what | source | licence |`` table of a samples README."""
    rows = []
    for line in readme.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        rows.append(Attribution(cells[0].strip("`"), cells[1], cells[2], cells[3]))
    return rows


def sample_attributions(source_paths: list[str]) -> list[Attribution]:
    """Return the README attributions of every shown file that lies in a ``samples`` folder.

    A file matches a README row when its path relative to the folder holding
    the README matches the row's path (a folder, a file, or a glob such as
    ``xray/ap_pelvis_ddh_*.dcm``).
    """
    found: dict[str, Attribution] = {}
    for text in source_paths:
        path = Path(text).resolve()
        for parent in path.parents:
            readme = parent / SAMPLES_README_NAME
            if parent.name != "samples" or not readme.is_file():
                continue
            relative = path.relative_to(parent).as_posix()
            for row in _readme_rows(readme):
                pattern = row.path.rstrip("/")
                if fnmatch.fnmatch(relative, pattern) or relative.startswith(pattern + "/"):
                    found[row.path] = row
            break
    return list(found.values())


def _markdown_text(text: str) -> str:
    """Escape a README cell and keep its inline code spans as ``<code>``."""
    escaped = esc(text)
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", escaped)


# --- Model card --------------------------------------------------------------------


def _limitations(config: BundleConfig) -> list[str]:
    items = []
    if config.intended_use is IntendedUse.DEMO:
        items.append(
            "Demo bundle: trained on a simulated cohort (phantom radiographs, CT and "
            "generated notes). Its figures say nothing about real patients. Not for clinical use."
        )
    elif config.intended_use is IntendedUse.RESEARCH:
        items.append("Research bundle: not for clinical use.")
    items.extend(
        [
            "DeLong intervals and tests are clustered by patient (Obuchowski), so the "
            "correlation between the two hips of one patient widens them, as it does the "
            "patient bootstrap intervals.",
            "Grad-CAM maps explain the predicted class at the resolution of the last "
            "convolutional stage; they show where the model looked, not a lesion outline.",
            "Figures hold for the cohort evaluated; a new centre, scanner or population needs "
            "its own external validation.",
        ]
    )
    return items


def _counts_text(counts: dict[str, Any] | None) -> str:
    if not counts:
        return "n/a"
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def model_card_section(config: BundleConfig, metrics: dict[str, Any]) -> str:
    """Identity, intended use, training data, stored and evaluated figures, limitations."""
    training = config.training_data
    stored_test = config.metrics.get("test", {}) if isinstance(config.metrics, dict) else {}
    rows = [
        ("Name", config.name),
        ("Version", config.version),
        ("Intended use", config.intended_use.value),
        ("Created", config.created.isoformat() if config.created else "n/a"),
        ("Weights SHA-256", config.weights_sha256 or "n/a"),
        (
            "Architecture",
            f"ResNet-{config.architecture.radiograph.depth} (radiograph), "
            f"3D ResNet-{config.architecture.ct.depth} (CT), text embedding "
            f"{config.architecture.text_dim}, {config.architecture.fusion.value} fusion",
        ),
        (
            "Training hips",
            f"{training.get('n_hips', 'n/a')} of {training.get('n_patients', 'n/a')} patients",
        ),
        ("Training classes", _counts_text(training.get("class_counts"))),
        ("Centres", _counts_text(training.get("centres"))),
        ("Training mode", str(training.get("mode", "n/a"))),
        ("Stored test macro AUC", fmt(stored_test.get("macro_auc"))),
        ("This evaluation: macro AUC", fmt(metrics.get("macro_auc"))),
        ("This evaluation: accuracy", fmt(metrics.get("accuracy"))),
    ]
    table = "".join(f"<tr><th>{esc(name)}</th><td>{esc(value)}</td></tr>" for name, value in rows)
    limitations = "".join(f"<li>{esc(item)}</li>" for item in _limitations(config))
    intended = (
        "<p>Classifies each hip as normal, osteoarthritis, osteonecrosis of the femoral head "
        "or femoroacetabular impingement from an AP pelvis radiograph, a pelvic CT and "
        "clinical text, following Zhang et al., Medicina 2026;62(2):250 "
        "(doi:10.3390/medicina62020250).</p>"
    )
    return section(
        "model-card",
        "Model card",
        f'{intended}<table class="figures">{table}</table><h3>Limitations</h3>'
        f"<ul>{limitations}</ul>",
    )


# --- Assembly ------------------------------------------------------------------------


def render_report(inputs: ReportInputs) -> str:
    """Return the report as one HTML document."""
    config = inputs.config
    metrics = inputs.metrics
    title = f"hipfuse evaluation: {config.name} {config.version}"
    banner = ""
    if config.intended_use is not IntendedUse.CLINICAL:
        banner = (
            f'<p class="banner">{esc(config.intended_use.value.upper())} MODEL: NOT FOR '
            "CLINICAL USE</p>"
        )

    sections = [
        summary_section(metrics),
        per_class_section(metrics),
        roc_section(metrics, inputs.predictions),
        decision_curve_section(metrics),
        reliability_section(metrics),
        confusion_section(metrics),
        ablation_section(inputs.ablation),
        attention_section(inputs.attention, metrics["class_names"]),
        localisation_section(inputs.localisation),
        gallery_section(inputs.gallery, inputs.evaluation_dir),
        model_card_section(config, metrics),
    ]

    navigation = "".join(
        f'<a href="#{anchor}">{esc(name)}</a>'
        for anchor, name in (
            ("summary", "Summary"),
            ("per-class", "Per class"),
            ("roc", "ROC"),
            ("decision-curves", "Decision curves"),
            ("reliability", "Calibration"),
            ("confusion", "Confusion"),
            ("ablation", "Ablation"),
            ("attention", "Attention"),
            ("localisation", "Localisation"),
            ("gallery", "Gallery"),
            ("model-card", "Model card"),
        )
    )

    sources = [
        source for entry in (inputs.gallery or {}).get("entries", []) for source in entry["sources"]
    ]
    attributions = sample_attributions(sources)
    written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    footer = [
        f"<p>Written by hipfuse-train report on {esc(written)} from "
        f"{esc(inputs.evaluation_dir.name)}.</p>"
    ]
    if attributions:
        items = "".join(
            f"<li><code>{esc(a.path)}</code>: {_markdown_text(a.description)} Source: "
            f"{_markdown_text(a.source)}. Licence: {_markdown_text(a.licence)}.</li>"
            for a in attributions
        )
        footer.append(f"<p>Sample data shown in this report:</p><ul>{items}</ul>")

    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1>{banner}<nav>{navigation}</nav>"
        f"{''.join(sections)}<footer>{''.join(footer)}</footer></body></html>\n"
    )


def write_report(
    evaluation_dir: Path | str,
    bundle_dir: Path | str,
    out_path: Path | str,
    *,
    ablation_dir: Path | str | None = None,
) -> Path:
    """Load the inputs, render the report and write it to ``out_path``; return the path."""
    inputs = load_report_inputs(evaluation_dir, bundle_dir, ablation_dir)
    document = render_report(inputs)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(document, encoding="utf-8")
    log.info("report_written", path=str(out_path), size_bytes=len(document.encode("utf-8")))
    return out_path
