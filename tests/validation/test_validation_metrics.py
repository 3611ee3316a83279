"""The validation figures against hand-made data and direct computation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lods.validation import metrics

# Four positives, six negatives; at 0.5: TP 3, FN 1, FP 1, TN 5.
SCORES = [0.9, 0.8, 0.6, 0.2, 0.7, 0.4, 0.3, 0.2, 0.1, 0.05]
LABELS = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]


def pairwise_auc(scores: list[float], labels: list[int]) -> float:
    """The AUC by its definition: P(score of a positive > score of a negative), ties ½."""
    positives = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    negatives = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(
        1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives)
    )
    return wins / (len(positives) * len(negatives))


def test_confusion_and_the_four_proportions_at_a_threshold() -> None:
    c = metrics.confusion(SCORES, LABELS, 0.5)
    assert (c.tp, c.fn, c.fp, c.tn) == (3, 1, 1, 5)
    assert c.sensitivity.value == pytest.approx(3 / 4)
    assert c.specificity.value == pytest.approx(5 / 6)
    assert c.ppv.value == pytest.approx(3 / 4)
    assert c.npv.value == pytest.approx(5 / 6)
    assert (c.sensitivity.numerator, c.sensitivity.denominator) == (3, 4)
    # The platform's rule: a score equal to the threshold is positive.
    assert metrics.confusion(SCORES, LABELS, 0.6).tp == 3
    assert metrics.confusion(SCORES, LABELS, 0.60001).tp == 2


def test_confusion_of_decisions() -> None:
    c = metrics.confusion_of([True, False, True, False], [1, 1, 0, 0])
    assert (c.tp, c.fn, c.fp, c.tn) == (1, 1, 1, 1)
    assert c.as_dict()["sensitivity"]["value"] == 0.5


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (1, 2, 0.0945, 0.9055),
        (50, 100, 0.4038, 0.5962),
    ],
)
def test_wilson_interval_known_values(k: int, n: int, low: float, high: float) -> None:
    p = metrics.wilson(k, n)
    assert p.value == pytest.approx(k / n)
    assert p.low == pytest.approx(low, abs=5e-4)
    assert p.high == pytest.approx(high, abs=5e-4)


def test_undefined_proportions_are_none_not_zero() -> None:
    p = metrics.wilson(0, 0)
    assert (p.value, p.low, p.high) == (None, None, None)
    only_negatives = metrics.confusion([0.1, 0.9], [0, 0], 0.5)
    assert only_negatives.sensitivity.value is None
    assert only_negatives.specificity.value == 0.5
    assert metrics.confusion([0.1], [1], 0.5).ppv.value is None
    with pytest.raises(metrics.MetricsInputError):
        metrics.wilson(3, 2)


def test_prevalence() -> None:
    p = metrics.prevalence(LABELS)
    assert (p.numerator, p.denominator, p.value) == (4, 10, 0.4)
    assert metrics.prevalence([]).value is None


def test_auc_of_separable_reversed_and_tied_data() -> None:
    assert metrics.auc([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 1.0
    assert metrics.auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert metrics.auc([0.5, 0.5, 0.5, 0.5], [1, 1, 0, 0]) == 0.5
    assert metrics.auc([0.5, 0.5], [1, 1]) is None
    assert metrics.auc(SCORES, LABELS) == pytest.approx(pairwise_auc(SCORES, LABELS))


def test_auc_equals_the_definition_and_the_trapezoid_with_ties() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, size=200).tolist()
    # Coarse scores: many ties, including across the classes.
    scores = (np.round(rng.random(200) * 10) / 10 + np.array(labels) * 0.2).tolist()
    expected = pairwise_auc(scores, labels)
    assert metrics.auc(scores, labels) == pytest.approx(expected)
    curve = metrics.roc_curve(scores, labels)
    assert metrics.trapezoid_auc(curve) == pytest.approx(expected)


def test_roc_curve_has_a_point_per_distinct_score() -> None:
    curve = metrics.roc_curve([0.9, 0.5, 0.5, 0.1], [1, 1, 0, 0])
    assert [(p.threshold, p.fpr, p.tpr) for p in curve] == [
        (None, 0.0, 0.0),
        (0.9, 0.0, 0.5),
        (0.5, 0.5, 1.0),
        (0.1, 1.0, 1.0),
    ]
    assert metrics.roc_curve([0.2, 0.3], [0, 0]) == []


def test_bootstrap_interval_contains_the_auc_and_is_reproducible() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=80)
    scores = rng.random(80) + labels * 0.5
    value = metrics.auc(scores, labels)
    first = metrics.bootstrap_auc_ci(scores, labels, replicates=500, seed=11)
    again = metrics.bootstrap_auc_ci(scores, labels, replicates=500, seed=11)
    other = metrics.bootstrap_auc_ci(scores, labels, replicates=500, seed=12)
    assert value is not None and first.low is not None and first.high is not None
    assert first.low <= value <= first.high
    assert first.low < first.high
    assert (first.low, first.high) == (again.low, again.high)
    assert (first.low, first.high) != (other.low, other.high)
    assert first.replicates == 500 and first.seed == 11
    none = metrics.bootstrap_auc_ci([0.1, 0.2], [0, 0])
    assert (none.low, none.high, none.replicates) == (None, None, 0)


def test_calibration_bins_on_the_normalised_score_range() -> None:
    scores = [0, 5, 15, 95, 100, 100]
    labels = [0, 0, 1, 1, 1, 0]
    bins = metrics.calibration(scores, labels, (0.0, 100.0), bins=10)
    assert len(bins) == 10
    assert [b.count for b in bins] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 3]
    assert bins[0].mean_predicted == pytest.approx(0.025)
    assert bins[0].observed_rate == 0.0
    assert bins[1].observed_rate == 1.0
    assert bins[9].mean_predicted == pytest.approx((0.95 + 1 + 1) / 3)
    assert bins[9].observed_rate == pytest.approx(2 / 3)
    assert bins[4].mean_predicted is None and bins[4].observed_rate is None
    assert sum(b.count for b in bins) == len(scores)


def test_brier_score() -> None:
    assert metrics.brier([1.0, 0.0], [1, 0]) == 0.0
    assert metrics.brier([0.8, 0.3], [1, 0]) == pytest.approx((0.04 + 0.09) / 2)
    assert metrics.scores_are_probabilities((0.0, 1.0))
    assert not metrics.scores_are_probabilities((0.0, 100.0))


def test_subgroups_compute_each_group_on_its_own_cases() -> None:
    groups = ["F", "F", "M", "M", "F", None, "M", "F", "M", "F"]
    doubtful = [s >= 0.3 for s in SCORES]
    sure = [s >= 0.7 for s in SCORES]
    rows = {r.value: r for r in metrics.subgroups("sex", groups, SCORES, LABELS, doubtful, sure)}
    assert set(rows) == {"F", "M", "unknown"}
    women = [i for i, g in enumerate(groups) if g == "F"]
    f = rows["F"]
    assert f.count == len(women) and f.key == "sex"
    expected = metrics.confusion_of(
        [doubtful[i] for i in women], [LABELS[i] for i in women]
    ).sensitivity
    assert f.sensitivity_doubtful == expected
    assert f.auc == pytest.approx(
        pairwise_auc([SCORES[i] for i in women], [LABELS[i] for i in women])
    )
    assert rows["unknown"].auc is None  # one case, one class
    assert rows["unknown"].as_dict()["prevalence"]["denominator"] == 1


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(metrics.MetricsInputError):
        metrics.auc([0.1, 0.2], [0, 2])
    with pytest.raises(metrics.MetricsInputError):
        metrics.auc([0.1, float("nan")], [0, 1])
    with pytest.raises(metrics.MetricsInputError):
        metrics.confusion([0.1, 0.2, 0.3], [0, 1], 0.5)
