"""evaluate_predictions, compare_models, predictions CSV validation and output files."""

import csv
import json

import numpy as np
import pandas as pd
import pytest
from dcurves import dca
from scipy import special
from sklearn import metrics as skm

from hipfuse.inference.types import HIP_CLASSES, HipClass
from hipfuse.training import delong, evaluate, evaluation_files, model_comparison, predictions_io
from hipfuse.training.predictions_io import PredictionsError

CLASS_NAMES = [c.value for c in HIP_CLASSES]


def _cohort(n_patients=120, seed=0, signal=1.2):
    """Two hips per patient, four hip classes, informative softmax probabilities."""
    rng = np.random.default_rng(seed)
    n = 2 * n_patients
    labels = rng.integers(0, 4, n)
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), labels] += signal
    return (
        np.array(CLASS_NAMES)[labels],
        np.repeat([f"P{i:03d}" for i in range(n_patients)], 2),
        special.softmax(logits, axis=1),
    )


def _frame(labels, patient_ids, probabilities, **extra):
    columns = {"label": labels, "patient_id": patient_ids}
    for k, name in enumerate(CLASS_NAMES):
        columns[f"prob_{name}"] = probabilities[:, k]
    columns.update(extra)
    return pd.DataFrame(columns)


@pytest.fixture(scope="module")
def cohort():
    return _cohort()


@pytest.fixture(scope="module")
def result(cohort):
    labels, patient_ids, probabilities = cohort
    return evaluate.evaluate_predictions(
        labels=labels,
        patient_ids=patient_ids,
        probabilities=probabilities,
        model_name="fusion",
        seed=7,
        n_bootstrap=300,
    )


def test_result_is_strict_json(result):
    text = json.dumps(result, allow_nan=False)

    assert json.loads(text) == result


def test_result_counts(result):
    assert result["n_cases"] == 240
    assert result["n_patients"] == 120
    assert result["class_names"] == CLASS_NAMES
    assert result["model_name"] == "fusion"
    assert result["bootstrap"] == {"n_resamples": 300, "seed": 7, "unit": "patient"}
    assert result["undefined"] == []


def test_discrimination_matches_sklearn(cohort, result):
    labels, _, probabilities = cohort
    y = np.array([CLASS_NAMES.index(v) for v in labels])
    predicted = probabilities.argmax(axis=1)
    one_hot = y[:, None] == np.arange(4)

    for k, name in enumerate(CLASS_NAMES):
        expected = skm.roc_auc_score(one_hot[:, k], probabilities[:, k])
        assert result["auc"][name] == pytest.approx(expected, abs=1e-12)
    assert result["macro_auc"] == pytest.approx(
        skm.roc_auc_score(y, probabilities, multi_class="ovr"), abs=1e-12
    )
    assert result["micro_auc"] == pytest.approx(
        skm.roc_auc_score(one_hot, probabilities, average="micro"), abs=1e-12
    )
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted), abs=1e-15)
    assert result["confusion_matrix"]["counts"] == skm.confusion_matrix(y, predicted).tolist()


def test_per_class_metrics_match_sklearn(cohort, result):
    labels, _, probabilities = cohort
    y = np.array([CLASS_NAMES.index(v) for v in labels])
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, predicted)

    for k, name in enumerate(CLASS_NAMES):
        entry = result["per_class"][name]
        assert entry["support"] == support[k]
        assert entry["sensitivity"] == pytest.approx(recall[k], abs=1e-12)
        assert entry["ppv"] == pytest.approx(precision[k], abs=1e-12)
        assert entry["f1"] == pytest.approx(f1[k], abs=1e-12)
        assert entry["specificity"] == pytest.approx(skm.recall_score(y != k, predicted != k))
        assert entry["npv"] == pytest.approx(skm.precision_score(y != k, predicted != k))


FIGURES_WITH_INTERVALS = ["accuracy", "macro_auc", "micro_auc"]


@pytest.mark.parametrize("figure", FIGURES_WITH_INTERVALS, ids=FIGURES_WITH_INTERVALS)
def test_bootstrap_intervals_bracket_estimates(result, figure):
    low, high = result[f"{figure}_ci"]

    assert low < result[figure] < high


@pytest.mark.parametrize("metric", evaluate.THRESHOLD_METRICS, ids=evaluate.THRESHOLD_METRICS)
def test_per_class_intervals_bracket_estimates(result, metric):
    for name in CLASS_NAMES:
        low, high = result["per_class"][name][f"{metric}_ci"]
        assert low <= result["per_class"][name][metric] <= high


def test_auc_ci_is_delong_clustered_by_patient(cohort, result):
    labels, patient_ids, probabilities = cohort
    estimate = delong.delong_auc(
        labels == CLASS_NAMES[2], probabilities[:, 2], clusters=np.asarray(patient_ids)
    )
    independent = delong.delong_auc(labels == CLASS_NAMES[2], probabilities[:, 2])

    assert result["auc_ci"][CLASS_NAMES[2]] == [estimate.ci_low, estimate.ci_high]
    assert result["auc_variance"][CLASS_NAMES[2]] == estimate.variance
    assert estimate.variance != independent.variance
    assert result["auc_interval"] == delong.AUC_INTERVAL_METHOD


def test_calibration_section_matches_sklearn(cohort, result):
    labels, _, probabilities = cohort
    y = np.array([CLASS_NAMES.index(v) for v in labels])
    section = result["calibration"]

    assert section["brier_score"] == pytest.approx(
        skm.brier_score_loss(y, probabilities, labels=[0, 1, 2, 3]), rel=1e-12
    )
    for k, name in enumerate(CLASS_NAMES):
        assert section["brier_score_per_class"][name] == pytest.approx(
            skm.brier_score_loss(y == k, probabilities[:, k]), rel=1e-12
        )
        assert section["slope"][name] > 0
    assert sum(section["reliability"]["top_label"]["count"]) == 240
    assert len(section["reliability"][CLASS_NAMES[0]]["count"]) == 15
    assert 0 <= section["ece_top_label"] <= 1


def test_decision_curve_section_matches_dcurves(cohort, result):
    labels, _, probabilities = cohort
    name = CLASS_NAMES[1]
    data = pd.DataFrame({"outcome": (labels == name).astype(int), "model": probabilities[:, 1]})
    thresholds = result["decision_curve"]["thresholds"]

    table = dca(data=data, outcome="outcome", modelnames=["model"], thresholds=thresholds)

    expected = table.loc[table["model"] == "model", "net_benefit"].to_numpy()
    np.testing.assert_allclose(
        result["decision_curve"]["classes"][name]["model"], expected, rtol=0, atol=1e-9
    )
    assert len(thresholds) == 99


def test_same_seed_same_result_other_seed_differs(cohort):
    labels, patient_ids, probabilities = cohort

    def run(seed):
        return evaluate.evaluate_predictions(
            labels=labels,
            patient_ids=patient_ids,
            probabilities=probabilities,
            seed=seed,
            n_bootstrap=100,
        )

    first = run(1)
    assert run(1) == first
    assert run(2)["accuracy_ci"] != first["accuracy_ci"]


def test_frame_input_equals_array_input(cohort):
    labels, patient_ids, probabilities = cohort
    kwargs = {"seed": 3, "n_bootstrap": 50}

    from_frame = evaluate.evaluate_predictions(_frame(labels, patient_ids, probabilities), **kwargs)
    from_arrays = evaluate.evaluate_predictions(
        labels=labels, patient_ids=patient_ids, probabilities=probabilities, **kwargs
    )

    assert from_frame == from_arrays


def test_enum_and_index_labels_accepted(cohort):
    labels, patient_ids, probabilities = cohort
    indices = np.array([CLASS_NAMES.index(v) for v in labels])
    members = [HipClass(v) for v in labels]
    kwargs = {"seed": 0, "n_bootstrap": 20}

    by_index = evaluate.evaluate_predictions(
        labels=indices, patient_ids=patient_ids, probabilities=probabilities, **kwargs
    )
    by_member = evaluate.evaluate_predictions(
        labels=members,
        patient_ids=patient_ids,
        probabilities=probabilities,
        class_names=list(HIP_CLASSES),
        **kwargs,
    )

    assert by_index["auc"] == by_member["auc"]
    assert by_index["class_names"] == CLASS_NAMES


def test_absent_class_gives_nulls_with_reasons():
    labels, patient_ids, probabilities = _cohort(40, seed=1)
    labels[labels == CLASS_NAMES[3]] = CLASS_NAMES[0]

    result = evaluate.evaluate_predictions(
        labels=labels, patient_ids=patient_ids, probabilities=probabilities, n_bootstrap=50
    )

    fai = CLASS_NAMES[3]
    assert result["auc"][fai] is None
    assert result["macro_auc"] is None
    assert result["per_class"][fai]["sensitivity"] is None
    assert result["calibration"]["slope"][fai] is None
    reasons = {(u["figure"], u["class"]): u["reason"] for u in result["undefined"]}
    assert reasons[("auc", fai)] == "no_positives"
    assert reasons[("sensitivity", fai)] == "no_positives"
    assert reasons[("macro_auc", None)] == "class_auc_undefined"
    assert reasons[("calibration", fai)] == "no_positives"
    assert result["bootstrap_valid_resamples"][f"sensitivity/{fai}"] == 0
    json.dumps(result, allow_nan=False)


def test_custom_class_list():
    rng = np.random.default_rng(2)
    labels = rng.choice(["benign", "malignant"], 60)
    probabilities = rng.dirichlet([1, 1], 60)

    result = evaluate.evaluate_predictions(
        labels=labels,
        patient_ids=np.arange(60),
        probabilities=probabilities,
        class_names=["benign", "malignant"],
        n_bootstrap=20,
    )

    assert list(result["auc"]) == ["benign", "malignant"]
    assert result["auc"]["benign"] == pytest.approx(result["auc"]["malignant"])


# --- CSV reading and validation ------------------------------------------------


def _write_predictions(path, rows, header=None):
    header = header or ["label", "patient_id", *(f"prob_{n}" for n in CLASS_NAMES)]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


GOOD_ROW = ["normal", "P1", "0.7", "0.1", "0.1", "0.1"]


def test_read_single_model_csv(tmp_path):
    path = _write_predictions(
        tmp_path / "p.csv", [GOOD_ROW, ["osteoarthritis", "P1", "0.2", "0.5", "0.2", "0.1"]]
    )

    by_model = predictions_io.read_predictions_csv(path)

    assert list(by_model) == ["model"]
    predictions = by_model["model"]
    assert predictions.class_names == tuple(CLASS_NAMES)
    np.testing.assert_array_equal(predictions.labels, [0, 1])
    np.testing.assert_array_equal(predictions.patient_ids, ["P1", "P1"])
    assert predictions.probabilities[1, 1] == 0.5


BAD_FILES = {
    "probabilities_do_not_sum_to_one": (
        [["normal", "P1", "0.7", "0.1", "0.1", "0.2"]],
        None,
        [(2, None, "sum to 1.1")],
    ),
    "unknown_label": (
        [["arthritis", "P1", "0.7", "0.1", "0.1", "0.1"]],
        None,
        [(2, "label", "unknown label 'arthritis'")],
    ),
    "nan_probability": (
        [["normal", "P1", "NaN", "0.1", "0.1", "0.8"]],
        None,
        [(2, "prob_normal", "missing or NaN")],
    ),
    "empty_probability": (
        [GOOD_ROW, ["normal", "P2", "0.7", "", "0.1", "0.2"]],
        None,
        [(3, "prob_osteoarthritis", "missing or NaN")],
    ),
    "text_probability": (
        [["normal", "P1", "high", "0.1", "0.1", "0.8"]],
        None,
        [(2, "prob_normal", "'high' is not a number")],
    ),
    "probability_above_one": (
        [["normal", "P1", "1.2", "-0.1", "0.0", "-0.1"]],
        None,
        [
            (2, "prob_normal", "outside [0, 1]"),
            (2, "prob_osteoarthritis", "outside [0, 1]"),
            (2, "prob_femoroacetabular_impingement", "outside [0, 1]"),
        ],
    ),
    "missing_patient_id": (
        [["normal", "", "0.7", "0.1", "0.1", "0.1"]],
        None,
        [(2, "patient_id", "patient_id is missing")],
    ),
    "missing_column": (
        [["normal", "0.7", "0.1", "0.1", "0.1"]],
        ["label", *(f"prob_{n}" for n in CLASS_NAMES)],
        [(None, "patient_id", "missing column")],
    ),
    "two_models_without_case_id": (
        [["normal", "P1", "0.7", "0.1", "0.1", "0.1", "a"], [*GOOD_ROW, "b"]],
        ["label", "patient_id", *(f"prob_{n}" for n in CLASS_NAMES), "model"],
        [(None, "case_id", "needed to pair the 2 models")],
    ),
}


@pytest.mark.parametrize(("rows", "header", "expected"), BAD_FILES.values(), ids=BAD_FILES.keys())
def test_invalid_csv_reports_line_and_column(tmp_path, rows, header, expected):
    path = _write_predictions(tmp_path / "p.csv", rows, header)

    with pytest.raises(PredictionsError) as raised:
        predictions_io.read_predictions_csv(path)

    problems = raised.value.problems
    assert len(problems) == len(expected)
    for problem, (line, column, text) in zip(problems, expected, strict=True):
        assert problem.line == line
        assert problem.column == column
        assert text in problem.message
    assert str(path) in str(raised.value)


def test_invalid_csv_reports_every_problem_at_once(tmp_path):
    rows = [
        GOOD_ROW,
        ["normal", "P2", "0.5", "0.1", "0.1", "0.1"],
        ["hip", "P3", "0.7", "0.1", "0.1", "0.1"],
        ["normal", "", "x", "0.1", "0.1", "0.1"],
    ]
    path = _write_predictions(tmp_path / "p.csv", rows)

    with pytest.raises(PredictionsError, match="has 4 problem") as raised:
        predictions_io.read_predictions_csv(path)

    found = {(p.line, p.column) for p in raised.value.problems}
    assert found == {(3, None), (4, "label"), (5, "patient_id"), (5, "prob_normal")}


def test_expected_classes_checked(tmp_path):
    path = _write_predictions(tmp_path / "p.csv", [GOOD_ROW])

    with pytest.raises(PredictionsError) as raised:
        predictions_io.read_predictions_csv(path, class_names=[*CLASS_NAMES[:3], "dysplasia"])

    messages = {(p.column, p.message) for p in raised.value.problems}
    assert ("prob_dysplasia", "missing column") in messages
    assert any(c == "prob_femoroacetabular_impingement" for c, _ in messages)


def _two_model_csv(tmp_path, shuffle_second=False, seed=0):
    labels, patient_ids, probabilities = _cohort(60, seed=seed)
    rng = np.random.default_rng(seed + 1)
    weaker = special.softmax(np.log(probabilities) * 0.4 + rng.normal(size=probabilities.shape), 1)
    case_ids = [f"C{i:03d}" for i in range(labels.size)]
    first = _frame(labels, patient_ids, probabilities, model="fusion", case_id=case_ids)
    second = _frame(labels, patient_ids, weaker, model="xray_only", case_id=case_ids)
    if shuffle_second:
        second = second.sample(frac=1.0, random_state=3)
    path = tmp_path / f"two_models_{shuffle_second}.csv"
    pd.concat([first, second]).to_csv(path, index=False)
    return path, labels, probabilities, weaker


def test_two_models_pair_by_case_id(tmp_path):
    path, labels, fusion, weaker = _two_model_csv(tmp_path, shuffle_second=True)
    _, patient_ids, _ = _cohort(60, seed=0)
    patients = np.asarray(patient_ids)

    by_model = predictions_io.read_predictions_csv(path)
    comparison = model_comparison.compare_models(by_model, n_bootstrap=200, seed=1)

    assert list(by_model) == ["fusion", "xray_only"]
    pair = comparison["comparisons"][0]
    assert (pair["first"], pair["second"], pair["n_cases"]) == ("fusion", "xray_only", 120)
    name = CLASS_NAMES[0]
    expected = delong.delong_test(labels == name, fusion[:, 0], weaker[:, 0], clusters=patients)
    assert pair["per_class"][name]["z"] == pytest.approx(expected.z, rel=1e-9)
    assert pair["per_class"][name]["p_value"] == pytest.approx(expected.p_value, rel=1e-9)
    y = np.array([CLASS_NAMES.index(v) for v in labels])
    macro = delong.macro_delong_test(y, fusion, weaker, clusters=patients)
    assert pair["macro"]["z"] == pytest.approx(macro.z, rel=1e-9)
    low, high = pair["macro_difference_bootstrap_ci"]
    assert low < pair["macro"]["difference"] < high
    json.dumps(comparison, allow_nan=False)


def test_shuffled_rows_give_same_comparison(tmp_path):
    ordered, *_ = _two_model_csv(tmp_path, shuffle_second=False)
    shuffled, *_ = _two_model_csv(tmp_path, shuffle_second=True)

    first = model_comparison.compare_models(
        predictions_io.read_predictions_csv(ordered), n_bootstrap=50
    )
    second = model_comparison.compare_models(
        predictions_io.read_predictions_csv(shuffled), n_bootstrap=50
    )

    assert first == second


def test_pairing_problems_reported(tmp_path):
    path, *_ = _two_model_csv(tmp_path)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = frame.drop(index=[5]).reset_index(drop=True)  # fusion loses case C005
    frame.loc[130, "label"] = "normal" if frame.loc[130, "label"] != "normal" else "osteoarthritis"
    frame.loc[131, "case_id"] = frame.loc[130, "case_id"]

    with pytest.raises(PredictionsError) as raised:
        predictions_io.predictions_from_frame(frame)

    messages = [str(p) for p in raised.value.problems]
    assert any("model 'fusion' has no row for case_id 'C005'" in m for m in messages)
    assert any("line 132" in m and "different label" in m for m in messages)
    assert any("line 133" in m and "appears again for model 'xray_only'" in m for m in messages)


def test_compare_models_rejects_different_cases():
    labels, patient_ids, probabilities = _cohort(20)
    first = predictions_io.Predictions.from_arrays(
        labels, patient_ids, probabilities, model_name="a"
    )
    second = predictions_io.Predictions.from_arrays(
        labels[:-2], patient_ids[:-2], probabilities[:-2], model_name="b"
    )

    with pytest.raises(ValueError, match="same cases"):
        model_comparison.compare_models([first, second])


def test_from_arrays_reports_all_problems():
    probabilities = np.array([[0.5, 0.5, 0, 0], [0.9, 0.9, 0, 0], [np.nan, 0.5, 0.5, 0]])

    with pytest.raises(PredictionsError) as raised:
        predictions_io.Predictions.from_arrays(
            ["normal", "hip", "normal"], ["a", "", "c"], probabilities
        )

    messages = [str(p) for p in raised.value.problems]
    assert len(messages) == 4
    assert any("row 1: unknown label 'hip'" in m for m in messages)
    assert any("row 1: patient_id is empty" in m for m in messages)
    assert any("row 1: probabilities sum to 1.8" in m for m in messages)
    assert any("row 2: probability is missing or NaN" in m for m in messages)


# --- Output files ----------------------------------------------------------------


def test_write_evaluation_files(tmp_path, result):
    written = evaluation_files.write_evaluation(result, tmp_path / "out")

    names = sorted(p.name for p in written)
    assert names == [
        "confusion_matrix.csv",
        "decision_curve.csv",
        "metrics.json",
        "per_class.csv",
        "reliability.csv",
    ]
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text()) == result
    per_class = pd.read_csv(out / "per_class.csv")
    assert per_class["class"].tolist() == CLASS_NAMES
    assert per_class["auc"].tolist() == pytest.approx([result["auc"][n] for n in CLASS_NAMES])
    assert per_class["f1_ci_low"].tolist() == pytest.approx(
        [result["per_class"][n]["f1_ci"][0] for n in CLASS_NAMES]
    )
    confusion = pd.read_csv(out / "confusion_matrix.csv", index_col="true_class")
    assert confusion.to_numpy().tolist() == result["confusion_matrix"]["counts"]
    assert confusion.columns.tolist() == CLASS_NAMES
    curve = pd.read_csv(out / "decision_curve.csv")
    assert len(curve) == 4 * 99
    reliability = pd.read_csv(out / "reliability.csv")
    assert len(reliability) == 5 * 15
    assert reliability.groupby("curve")["count"].sum().eq(240).all()


def test_write_evaluation_leaves_undefined_cells_empty(tmp_path):
    labels, patient_ids, probabilities = _cohort(30, seed=4)
    labels[labels == CLASS_NAMES[3]] = CLASS_NAMES[1]
    result = evaluate.evaluate_predictions(
        labels=labels, patient_ids=patient_ids, probabilities=probabilities, n_bootstrap=20
    )

    evaluation_files.write_evaluation(result, tmp_path)

    rows = list(csv.DictReader((tmp_path / "per_class.csv").open()))
    assert rows[3]["auc"] == ""
    assert rows[3]["sensitivity"] == ""
    assert rows[0]["auc"] != ""
