"""HTML sections of the evaluation report, each built from already loaded data.

Every value that goes into the HTML passes through :func:`html.escape`
(``esc``). Figures a test or a reader may check against ``metrics.json``
carry a ``data-metric`` attribute with their key.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hipfuse.inference.types import INPUT_MODALITIES
from hipfuse.training.report_figures import (
    GREY,
    PALETTE,
    Series,
    box_plot,
    line_chart,
    roc_points,
)

THRESHOLD_METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1")


def esc(value: Any) -> str:
    """Return ``value`` as text escaped for HTML content and attribute values."""
    return html.escape(str(value), quote=True)


def fmt(value: float | None, digits: int = 3) -> str:
    """Format a figure with ``digits`` decimals; ``n/a`` for an undefined one."""
    if value is None or not np.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def interval_text(interval: Sequence[float | None] | None) -> str:
    """Format ``[low, high]`` as ``(low to high)``; empty when undefined."""
    if not interval or interval[0] is None or interval[1] is None:
        return ""
    return f" ({fmt(interval[0])} to {fmt(interval[1])})"


def metric_cell(
    key: str, value: float | None, interval: Sequence[float | None] | None = None
) -> str:
    """Return a table cell whose figure carries ``data-metric=key``."""
    return (
        f'<td><span data-metric="{esc(key)}">{fmt(value)}</span>'
        f'<span class="ci">{esc(interval_text(interval))}</span></td>'
    )


def section(section_id: str, title: str, body: str) -> str:
    """Wrap ``body`` in a titled section with an anchor."""
    return f'<section id="{esc(section_id)}"><h2>{esc(title)}</h2>{body}</section>'


def summary_section(metrics: dict[str, Any]) -> str:
    """Overall figures: cases, macro and micro AUC, accuracy, Brier score, ECE."""
    calibration = metrics.get("calibration", {})
    level = round(100 * metrics.get("confidence_level", 0.95))
    rows = [
        ("Hips (cases)", f'<td data-metric="n_cases">{esc(metrics["n_cases"])}</td>'),
        ("Patients", f'<td data-metric="n_patients">{esc(metrics["n_patients"])}</td>'),
        (
            f"Macro AUC ({level}% patient bootstrap CI)",
            metric_cell("macro_auc", metrics.get("macro_auc"), metrics.get("macro_auc_ci")),
        ),
        (
            f"Micro AUC ({level}% CI)",
            metric_cell("micro_auc", metrics.get("micro_auc"), metrics.get("micro_auc_ci")),
        ),
        (
            f"Accuracy ({level}% CI)",
            metric_cell("accuracy", metrics.get("accuracy"), metrics.get("accuracy_ci")),
        ),
        (
            "Brier score (multiclass, 0 to 2)",
            metric_cell("calibration/brier_score", calibration.get("brier_score")),
        ),
        (
            "Expected calibration error (top label)",
            metric_cell("calibration/ece_top_label", calibration.get("ece_top_label")),
        ),
    ]
    body = "".join(f"<tr><th>{esc(name)}</th>{cell}</tr>" for name, cell in rows)
    note = (
        "<p>Decision rule: the most probable class (argmax). Bootstrap intervals resample "
        f"patients ({esc(metrics.get('bootstrap', {}).get('n_resamples', ''))} resamples), so "
        "both hips of a patient move together.</p>"
    )
    return section("summary", "Summary", f'<table class="figures">{body}</table>{note}')


def per_class_section(metrics: dict[str, Any]) -> str:
    """Per class: AUC with its DeLong interval and the threshold metrics with bootstrap ones."""
    header = "<tr><th>Class</th><th>Support</th><th>AUC (DeLong CI)</th>" + "".join(
        f"<th>{esc(name.upper() if len(name) <= 3 else name.capitalize())}</th>"
        for name in THRESHOLD_METRICS
    )
    rows = [header + "</tr>"]
    for name in metrics["class_names"]:
        entry = metrics["per_class"][name]
        cells = [
            f"<td>{esc(name)}</td>",
            f'<td data-metric="per_class/{esc(name)}/support">{esc(entry["support"])}</td>',
            metric_cell(f"auc/{name}", metrics["auc"].get(name), metrics["auc_ci"].get(name)),
        ]
        for metric_name in THRESHOLD_METRICS:
            cells.append(
                metric_cell(
                    f"per_class/{name}/{metric_name}",
                    entry.get(metric_name),
                    entry.get(f"{metric_name}_ci"),
                )
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return section(
        "per-class",
        "Per-class figures (one class against the others)",
        f'<table class="figures">{"".join(rows)}</table>',
    )


def roc_section(metrics: dict[str, Any], predictions: Any | None) -> str:
    """ROC curve of every class, one-vs-rest, from the per-hip predictions."""
    if predictions is None:
        return section(
            "roc",
            "ROC curves",
            "<p>No predictions.csv in the evaluation folder, so no ROC curve is drawn.</p>",
        )
    series = []
    for k, name in enumerate(predictions.class_names):
        fpr, tpr = roc_points(predictions.labels == k, predictions.probabilities[:, k])
        auc = metrics["auc"].get(name)
        series.append(Series(f"{name} (AUC {fmt(auc)})", fpr, tpr, PALETTE[k % len(PALETTE)]))
    chart = line_chart(
        series,
        title="ROC, one class against the others",
        x_label="1 - specificity",
        y_label="sensitivity",
        diagonal=True,
    )
    return section("roc", "ROC curves", f'<div class="charts">{chart}</div>')


def decision_curve_section(metrics: dict[str, Any]) -> str:
    """Net benefit of the model, treat-all and treat-none per class over the thresholds."""
    curve = metrics["decision_curve"]
    thresholds = np.asarray(curve["thresholds"], dtype=np.float64)
    charts = []
    for name in metrics["class_names"]:
        values = curve["classes"][name]
        model = np.asarray([np.nan if v is None else v for v in values["model"]], dtype=float)
        treat_all = np.asarray(
            [np.nan if v is None else v for v in values["treat_all"]], dtype=float
        )
        top = float(np.nanmax(np.r_[model, treat_all, 0.05]))
        charts.append(
            line_chart(
                [
                    Series("model", thresholds, model, PALETTE[0]),
                    Series("treat all", thresholds, treat_all, PALETTE[1], dashed=True),
                    Series("treat none", thresholds, curve["treat_none"], GREY),
                ],
                title=name,
                x_label="threshold probability",
                y_label="net benefit",
                x_range=(float(thresholds.min()), float(thresholds.max())),
                y_range=(-0.05, top * 1.1),
            )
        )
    note = (
        "<p>Net benefit = TP/n - FP/n · t/(1 - t) at threshold probability t (Vickers and "
        "Elkin, Med Decis Making 2006;26:565-574), each class against the others.</p>"
    )
    return section(
        "decision-curves", "Decision curves", f'<div class="charts">{"".join(charts)}</div>{note}'
    )


def reliability_section(metrics: dict[str, Any]) -> str:
    """Reliability diagrams: top-label and per class, from the binned calibration."""
    reliability = metrics["calibration"]["reliability"]

    def points(bins: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        x = [np.nan if v is None else v for v in bins["mean_predicted"]]
        y = [np.nan if v is None else v for v in bins["observed_fraction"]]
        return np.asarray(x, dtype=float), np.asarray(y, dtype=float)

    x, y = points(reliability["top_label"])
    top_label = line_chart(
        [Series("top label", x, y, PALETTE[0], markers=True)],
        title="Top-label reliability",
        x_label="mean predicted probability",
        y_label="observed fraction",
        diagonal=True,
    )
    series = []
    for k, name in enumerate(metrics["class_names"]):
        x, y = points(reliability[name])
        series.append(Series(name, x, y, PALETTE[k % len(PALETTE)], markers=True))
    per_class = line_chart(
        series,
        title="Per-class reliability",
        x_label="mean predicted probability",
        y_label="observed fraction",
        diagonal=True,
    )
    return section(
        "reliability",
        "Reliability diagrams",
        f'<div class="charts">{top_label}{per_class}</div>'
        "<p>Points are equal-width probability bins with at least one hip; the dashed line "
        "is perfect calibration.</p>",
    )


def confusion_section(metrics: dict[str, Any]) -> str:
    """Confusion matrix, rows true class, columns predicted class, shaded by row share."""
    names = metrics["confusion_matrix"]["class_names"]
    counts = np.asarray(metrics["confusion_matrix"]["counts"], dtype=np.int64)
    header = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{esc(n)}</th>" for n in names)
    rows = [header + "</tr>"]
    for i, name in enumerate(names):
        total = max(int(counts[i].sum()), 1)
        cells = []
        for j in range(len(names)):
            share = counts[i, j] / total
            cells.append(
                f'<td style="background: rgba(0, 114, 178, {share:.2f})" '
                f'data-metric="confusion_matrix/{i}/{j}">{counts[i, j]}</td>'
            )
        rows.append(f"<tr><th>{esc(name)}</th>{''.join(cells)}</tr>")
    table = f'<table class="matrix">{"".join(rows)}</table>'
    return section("confusion", "Confusion matrix", table)


def ablation_section(table: dict[str, Any] | None) -> str:
    """Build the modality ablation table, or a note that none was given."""
    if table is None:
        return section(
            "ablation",
            "Modality ablation",
            "<p>No ablation folder was given (run <code>hipfuse-train ablate</code> and pass "
            "<code>--ablation</code>).</p>",
        )
    header = (
        "<tr><th>Modalities</th><th>Macro AUC (DeLong CI)</th><th>Accuracy</th>"
        "<th>Macro sensitivity</th><th>Macro specificity</th><th>ΔAUC vs all three</th>"
        "<th>p (paired DeLong)</th></tr>"
    )
    rows = [header]
    for row in table["rows"]:
        subset = row["subset"]
        p_value = row["p_value_vs_full"]
        if p_value is None:
            p_text = "n/a"
        elif p_value < 0.001:
            p_text = "<0.001"
        else:
            p_text = fmt(p_value)
        rows.append(
            f"<tr><td>{esc(subset)}</td>"
            + metric_cell(f"ablation/{subset}/macro_auc", row["macro_auc"], row["macro_auc_ci"])
            + metric_cell(f"ablation/{subset}/accuracy", row["accuracy"], row["accuracy_ci"])
            + metric_cell(
                f"ablation/{subset}/macro_sensitivity",
                row["macro_sensitivity"],
                row["macro_sensitivity_ci"],
            )
            + metric_cell(
                f"ablation/{subset}/macro_specificity",
                row["macro_specificity"],
                row["macro_specificity_ci"],
            )
            + f"<td>{esc(fmt(row['macro_auc_difference_vs_full']))}</td>"
            + f"<td>{esc(p_text)}</td></tr>"
        )
    note = (
        f"<p>Every subset trained with the same split, seed and crops, and tested on the same "
        f"{esc(table['n_hips'])} hips of {esc(table['n_patients'])} patients that have all "
        "three inputs. Accuracy, sensitivity and specificity intervals come from a patient "
        "bootstrap.</p>"
    )
    return section(
        "ablation", "Modality ablation", f'<table class="figures">{"".join(rows)}</table>{note}'
    )


def attention_section(attention: dict[str, np.ndarray] | None, class_names: Sequence[str]) -> str:
    """Distribution of the modality attention weights per true class."""
    if attention is None:
        return section(
            "attention",
            "Modality attention",
            "<p>No attention.csv in the evaluation folder.</p>",
        )
    members = [m.value for m in INPUT_MODALITIES]
    values = {}
    rows = ["<tr><th>Class</th>" + "".join(f"<th>{esc(m)} (median)</th>" for m in members)]
    for name in class_names:
        selected = attention["weights"][attention["labels"] == name]
        cells = []
        for index, member in enumerate(members):
            values[(name, member)] = selected[:, index]
            median = float(np.median(selected[:, index])) if selected.size else None
            cells.append(f"<td>{fmt(median)}</td>")
        rows.append(f"<tr><td>{esc(name)}</td>{''.join(cells)}</tr>")
    chart = box_plot(
        list(class_names),
        members,
        values,
        title="Attention weight per modality and true class",
        y_label="attention weight",
    )
    return section(
        "attention",
        "Modality attention",
        f'<div class="charts">{chart}</div><table class="figures">{"".join(rows)}</table>'
        "<p>Weights of the fusion's attention over the inputs each hip has; they sum to 1 "
        "per hip.</p>",
    )


def localisation_section(summary: dict[str, Any] | None) -> str:
    """Pointing game and energy inside the lesion mask per modality and class."""
    if summary is None:
        return section(
            "localisation",
            "Grad-CAM localisation",
            "<p>Not scored: the evaluated manifest has no lesion mask columns.</p>",
        )
    header = (
        "<tr><th>Modality</th><th>Class</th><th>Hips</th><th>Pointing game</th>"
        "<th>Energy inside mask (mean)</th><th>Flat-map baseline</th></tr>"
    )
    rows = [header]
    for modality, entry in summary["modalities"].items():
        groups = [("all abnormal", entry["all"]), *entry["per_class"].items()]
        for name, figures in groups:
            rows.append(
                f"<tr><td>{esc(modality)}</td><td>{esc(name)}</td>"
                f"<td>{esc(figures['n_hips'])}</td>"
                + metric_cell(
                    f"localisation/{modality}/{name}/pointing_game", figures["pointing_game"]
                )
                + metric_cell(
                    f"localisation/{modality}/{name}/energy_inside_mean",
                    figures["energy_inside_mean"],
                )
                + f"<td>{fmt(figures['uniform_baseline_mean'])}</td></tr>"
            )
    tolerance = f"{summary['tolerance_mm']:g}"
    note = (
        f"<p>Maps explain the predicted class. Pointing game: the map's maximum lies in the "
        f"lesion mask grown by {esc(tolerance)} mm. Flat-map baseline: "
        "the energy share a uniform map over the crop would score.</p>"
    )
    return section(
        "localisation",
        "Grad-CAM localisation",
        f'<table class="figures">{"".join(rows)}</table>{note}',
    )


def gallery_section(index: dict[str, Any] | None, evaluation_dir: Path) -> str:
    """Overlays of a few hips per class, embedded as base64 PNG."""
    if index is None or not index.get("entries"):
        return section("gallery", "Grad-CAM gallery", "<p>No gallery in the evaluation folder.</p>")
    figures = []
    for entry in index["entries"]:
        images = []
        for image in entry["images"]:
            path = evaluation_dir / image["file"]
            if not path.is_file():
                continue
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            images.append(
                f'<img src="data:image/png;base64,{data}" alt="{esc(image["view"])} overlay '
                f'of hip {esc(entry["hip_id"])}">'
            )
        attention = ", ".join(f"{m} {fmt(w, 2)}" for m, w in entry["attention"].items())
        figures.append(
            f'<figure class="gallery-item">{"".join(images)}<figcaption>'
            f"hip {esc(entry['hip_id'])}: true {esc(entry['label'])}, predicted "
            f"{esc(entry['predicted'])} (p={fmt(entry['probability'], 2)}); attention "
            f"{esc(attention)}</figcaption></figure>"
        )
    return section(
        "gallery",
        "Grad-CAM gallery",
        "<p>Heat maps explain the predicted class, rendered as the node renders them.</p>"
        + "".join(figures),
    )
