"""Classification metrics and AUCs checked against scikit-learn."""

import numpy as np
import pytest
from sklearn import metrics as skm

from hipfuse.training import delong, metrics
from hipfuse.training.metrics import UndefinedReason


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _informative(n, n_classes, seed, signal=1.5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), labels] += signal
    return labels, _softmax(logits)


def _ties(n, n_classes, seed):
    """Probabilities rounded to one decimal, so scores tie often."""
    labels, probabilities = _informative(n, n_classes, seed)
    rounded = np.round(probabilities, 1) + 1e-3
    return labels, rounded / rounded.sum(axis=1, keepdims=True)


def _one_class_never_predicted(n, n_classes, seed):
    labels, probabilities = _informative(n, n_classes, seed)
    probabilities[:, -1] *= 0.01
    return labels, probabilities / probabilities.sum(axis=1, keepdims=True)


CASES = {
    "four_classes_informative": lambda: _informative(300, 4, 1),
    "four_classes_weak_signal": lambda: _informative(120, 4, 2, signal=0.3),
    "three_classes": lambda: _informative(90, 3, 3),
    "binary": lambda: _informative(80, 2, 4),
    "tied_scores": lambda: _ties(200, 4, 5),
    "one_class_never_predicted": lambda: _one_class_never_predicted(150, 4, 6),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_confusion_and_accuracy_match_sklearn(case):
    labels, probabilities = case()
    n_classes = probabilities.shape[1]
    predicted = metrics.predicted_classes(probabilities)

    matrix = metrics.confusion_matrix(labels, predicted, n_classes)

    expected = skm.confusion_matrix(labels, predicted, labels=list(range(n_classes)))
    np.testing.assert_array_equal(matrix, expected)
    assert metrics.accuracy(labels, predicted) == pytest.approx(
        skm.accuracy_score(labels, predicted), abs=1e-15
    )


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_class_metrics_match_sklearn(case):
    labels, probabilities = case()
    n_classes = probabilities.shape[1]
    predicted = metrics.predicted_classes(probabilities)
    all_classes = list(range(n_classes))

    results = metrics.class_metrics(metrics.confusion_matrix(labels, predicted, n_classes))

    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predicted, labels=all_classes, zero_division=np.nan
    )
    for k, result in enumerate(results):
        is_k = labels == k
        predicted_k = predicted == k
        # Specificity is recall of the negative class; NPV its precision.
        specificity = skm.recall_score(~is_k, ~predicted_k, zero_division=np.nan)
        npv = skm.precision_score(~is_k, ~predicted_k, zero_division=np.nan)
        assert result.support == support[k]
        np.testing.assert_allclose(result.sensitivity, recall[k], rtol=1e-12)
        np.testing.assert_allclose(result.ppv, precision[k], rtol=1e-12)
        np.testing.assert_allclose(result.f1, f1[k], rtol=1e-12)
        np.testing.assert_allclose(result.specificity, specificity, rtol=1e-12)
        np.testing.assert_allclose(result.npv, npv, rtol=1e-12)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_auc_matches_sklearn(case):
    labels, probabilities = case()
    n_classes = probabilities.shape[1]
    one_hot = labels[:, None] == np.arange(n_classes)

    estimates = delong.one_vs_rest_auc(labels, probabilities)
    macro, reason = delong.macro_auc([e.auc for e in estimates])
    micro = delong.micro_auc(labels, probabilities)

    for k, estimate in enumerate(estimates):
        expected = skm.roc_auc_score(one_hot[:, k], probabilities[:, k])
        assert estimate.auc == pytest.approx(expected, abs=1e-12)
    if n_classes > 2:
        expected_macro = skm.roc_auc_score(labels, probabilities, multi_class="ovr")
    else:
        expected_macro = skm.roc_auc_score(one_hot, probabilities, average="macro")
    assert macro == pytest.approx(expected_macro, abs=1e-12)
    assert reason is None
    assert micro == pytest.approx(
        skm.roc_auc_score(one_hot, probabilities, average="micro"), abs=1e-12
    )


def test_binary_auc_counts_ties_half():
    is_positive = np.array([True, False, True, False])
    scores = np.array([0.5, 0.5, 0.9, 0.1])

    # Pairs (pos, neg): (0.5, 0.5) tie = 0.5, (0.5, 0.1) = 1, (0.9, 0.5) = 1, (0.9, 0.1) = 1.
    assert delong.binary_auc(is_positive, scores) == pytest.approx(3.5 / 4)


UNDEFINED_CASES = {
    # labels, predicted, class, metric, reason
    "class_absent_sensitivity": ([0, 0, 1, 1], [0, 1, 1, 0], 2, "sensitivity", "no_positives"),
    "class_absent_f1": ([0, 0, 1, 1], [0, 1, 1, 0], 2, "f1", "no_positives"),
    "never_predicted_ppv": ([0, 1, 2, 2], [0, 1, 1, 1], 2, "ppv", "no_predicted_positives"),
    "all_one_class_specificity": ([0, 0, 0], [0, 1, 0], 0, "specificity", "no_negatives"),
    "always_predicted_npv": ([0, 1, 2], [1, 1, 1], 1, "npv", "no_predicted_negatives"),
}


@pytest.mark.parametrize(
    ("labels", "predicted", "class_index", "metric", "reason"),
    UNDEFINED_CASES.values(),
    ids=UNDEFINED_CASES.keys(),
)
def test_undefined_metric_is_nan_with_reason(labels, predicted, class_index, metric, reason):
    matrix = metrics.confusion_matrix(np.array(labels), np.array(predicted), 3)

    result = metrics.class_metrics(matrix)[class_index]

    assert np.isnan(getattr(result, metric))
    assert result.undefined[metric] == UndefinedReason(reason)


def test_f1_zero_when_class_absent_but_predicted():
    matrix = metrics.confusion_matrix(np.array([0, 0, 1]), np.array([2, 0, 1]), 3)

    result = metrics.class_metrics(matrix)[2]

    assert result.f1 == 0.0
    assert "f1" not in result.undefined


def test_absent_class_auc_undefined():
    labels = np.array([0, 1, 0, 1, 0, 1])
    probabilities = _softmax(np.random.default_rng(0).normal(size=(6, 3)))

    estimates = delong.one_vs_rest_auc(labels, probabilities)
    macro, reason = delong.macro_auc([e.auc for e in estimates])

    assert np.isnan(estimates[2].auc)
    assert estimates[2].reason is UndefinedReason.NO_POSITIVES
    assert np.isnan(macro)
    assert reason is UndefinedReason.CLASS_AUC_UNDEFINED


def test_auc_with_one_positive_has_no_variance():
    is_positive = np.array([True, False, False, False])

    estimate = delong.delong_auc(is_positive, np.array([0.9, 0.1, 0.2, 0.95]))

    assert estimate.auc == pytest.approx(2 / 3)
    assert np.isnan(estimate.variance)
    assert estimate.reason is UndefinedReason.TOO_FEW_FOR_VARIANCE


VALIDATION_CASES = {
    "one_column": ([0, 0], np.ones((2, 1)), "at least two classes"),
    "row_count": ([0, 1, 1], np.full((2, 2), 0.5), "one label per case"),
    "float_labels": (np.array([0.0, 1.0]), np.full((2, 2), 0.5), "integer class indices"),
    "index_out_of_range": ([0, 2], np.full((2, 2), 0.5), "must lie in 0..1"),
    "nan_probability": ([0, 1], np.array([[0.5, np.nan], [0.5, 0.5]]), "NaN or infinity"),
}


@pytest.mark.parametrize(
    ("labels", "probabilities", "message"),
    VALIDATION_CASES.values(),
    ids=VALIDATION_CASES.keys(),
)
def test_validate_label_probabilities_rejects(labels, probabilities, message):
    with pytest.raises(ValueError, match=message):
        metrics.validate_label_probabilities(np.asarray(labels), probabilities)
