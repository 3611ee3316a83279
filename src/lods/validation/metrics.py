"""Diagnostic accuracy figures for a binary reference standard; pure (numpy only).

Everything takes plain sequences — `scores` (the solution's study scores), `labels` (the
reference standard, 1 = condition present, 0 = absent) and, where an operating point
matters, `predicted` (True = the solution called the case positive) — and returns small
frozen dataclasses with an `as_dict()` for JSON.

* Proportions (sensitivity, specificity, PPV, NPV, prevalence) carry a Wilson score
  interval (95 % by default). A proportion with denominator 0 is undefined: its value and
  interval are None, never 0 or 1.
* The ROC curve has one point per distinct score (all thresholds, "score ≥ threshold is
  positive"), from (0, 0) to (1, 1). The AUC is the Mann–Whitney statistic with ties
  counted as one half, which equals the trapezoid area under that curve.
* The bootstrap interval of the AUC resamples cases with replacement (fixed seed, so a
  report can be reproduced), drops replicates that hold only one class, and takes the
  percentile interval.
* Calibration bins the scores normalised to the manifest's score range into equal-width
  bins; the Brier score is given only when the scores are probabilities (range 0..1).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

#: The two-sided 95 % normal quantile.
Z95 = 1.959963984540054
BOOTSTRAP_REPLICATES = 2000
BOOTSTRAP_SEED = 20261129
CALIBRATION_BINS = 10

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


class MetricsInputError(ValueError):
    """The inputs cannot be scored (mismatched lengths, labels other than 0/1, NaN scores)."""


# --- inputs ---------------------------------------------------------------------------------


def _scores(scores: Sequence[float] | FloatArray) -> FloatArray:
    array = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(array)):
        raise MetricsInputError("scores must be finite numbers")
    return array


def _labels(labels: Sequence[int] | npt.NDArray[Any]) -> BoolArray:
    array = np.asarray(labels).reshape(-1)
    if array.size and not np.all(np.isin(array, (0, 1))):
        raise MetricsInputError("labels must be 0 or 1")
    return array.astype(bool)


def _pair(
    scores: Sequence[float] | FloatArray, labels: Sequence[int] | npt.NDArray[Any]
) -> tuple[FloatArray, BoolArray]:
    s, y = _scores(scores), _labels(labels)
    if s.shape != y.shape:
        raise MetricsInputError(f"{s.size} scores but {y.size} labels")
    return s, y


# --- proportions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Proportion:
    """`numerator / denominator` with its Wilson score interval; None when 0/0."""

    numerator: int
    denominator: int
    value: float | None
    low: float | None
    high: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wilson(numerator: int, denominator: int, z: float = Z95) -> Proportion:
    """The proportion k/n with its Wilson score interval (Wilson 1927)."""
    k, n = int(numerator), int(denominator)
    if n < 0 or k < 0 or k > n:
        raise MetricsInputError(f"not a proportion: {k}/{n}")
    if n == 0:
        return Proportion(k, n, None, None, None)
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return Proportion(k, n, p, low, high)


def prevalence(labels: Sequence[int] | npt.NDArray[Any]) -> Proportion:
    y = _labels(labels)
    return wilson(int(y.sum()), int(y.size))


# --- operating points -----------------------------------------------------------------------


@dataclass(frozen=True)
class Confusion:
    """Counts of a binary decision against the reference standard."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def sensitivity(self) -> Proportion:
        return wilson(self.tp, self.tp + self.fn)

    @property
    def specificity(self) -> Proportion:
        return wilson(self.tn, self.tn + self.fp)

    @property
    def ppv(self) -> Proportion:
        return wilson(self.tp, self.tp + self.fp)

    @property
    def npv(self) -> Proportion:
        return wilson(self.tn, self.tn + self.fn)

    def as_dict(self) -> dict[str, Any]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
            "sensitivity": self.sensitivity.as_dict(),
            "specificity": self.specificity.as_dict(),
            "ppv": self.ppv.as_dict(),
            "npv": self.npv.as_dict(),
        }


def confusion_of(
    predicted: Sequence[bool] | BoolArray, labels: Sequence[int] | npt.NDArray[Any]
) -> Confusion:
    """Counts of the decisions `predicted` (True = called positive) against `labels`."""
    p = np.asarray(predicted, dtype=bool).reshape(-1)
    y = _labels(labels)
    if p.shape != y.shape:
        raise MetricsInputError(f"{p.size} decisions but {y.size} labels")
    return Confusion(
        tp=int(np.sum(p & y)),
        fp=int(np.sum(p & ~y)),
        tn=int(np.sum(~p & ~y)),
        fn=int(np.sum(~p & y)),
    )


def confusion(
    scores: Sequence[float] | FloatArray,
    labels: Sequence[int] | npt.NDArray[Any],
    threshold: float,
) -> Confusion:
    """Counts when "score ≥ threshold" is called positive (the platform's certainty rule)."""
    s, y = _pair(scores, labels)
    return confusion_of(s >= threshold, y)


# --- ROC ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RocPoint:
    """Called positive when score ≥ `threshold` (None for the (0, 0) start: nothing is)."""

    threshold: float | None
    fpr: float
    tpr: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def roc_curve(
    scores: Sequence[float] | FloatArray, labels: Sequence[int] | npt.NDArray[Any]
) -> list[RocPoint]:
    """One point per distinct score, highest first, after (0, 0); empty unless both classes."""
    s, y = _pair(scores, labels)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return []
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tps = np.cumsum(y_sorted)
    fps = np.cumsum(~y_sorted)
    # The last index of each run of equal scores: all tied cases change side together.
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    points = [RocPoint(None, 0.0, 0.0)]
    points.extend(
        RocPoint(float(s_sorted[i]), float(fps[i] / negatives), float(tps[i] / positives))
        for i in last
    )
    return points


def _average_ranks(values: FloatArray) -> FloatArray:
    """1-based ranks, ties getting the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = ends - (counts - 1) / 2.0
    ranks: FloatArray = mean_rank[inverse].astype(np.float64)
    return ranks


def _auc(s: FloatArray, y: BoolArray) -> float | None:
    positives = int(y.sum())
    negatives = int(y.size - positives)
    if positives == 0 or negatives == 0:
        return None
    ranks = _average_ranks(s)
    u = float(ranks[y].sum()) - positives * (positives + 1) / 2.0
    return u / (positives * negatives)


def auc(
    scores: Sequence[float] | FloatArray, labels: Sequence[int] | npt.NDArray[Any]
) -> float | None:
    """Area under the ROC curve (Mann–Whitney U / (n₁n₀), ties ½); None unless both classes."""
    s, y = _pair(scores, labels)
    return _auc(s, y)


def trapezoid_auc(points: Sequence[RocPoint]) -> float | None:
    """The trapezoid area under ROC points (equals `auc` for the curve of `roc_curve`)."""
    if len(points) < 2:
        return None
    x = np.array([p.fpr for p in points])
    t = np.array([p.tpr for p in points])
    return float(np.sum(np.diff(x) * (t[1:] + t[:-1]) / 2.0))


@dataclass(frozen=True)
class Interval:
    low: float | None
    high: float | None
    #: Replicates that held both classes (the others cannot give an AUC and are dropped).
    replicates: int
    seed: int
    level: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap_auc_ci(
    scores: Sequence[float] | FloatArray,
    labels: Sequence[int] | npt.NDArray[Any],
    *,
    replicates: int = BOOTSTRAP_REPLICATES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> Interval:
    """Percentile bootstrap interval of the AUC, resampling cases with replacement."""
    s, y = _pair(scores, labels)
    if _auc(s, y) is None:
        return Interval(None, None, 0, seed, level)
    rng = np.random.default_rng(seed)
    values: list[float] = []
    for _ in range(replicates):
        index = rng.integers(0, s.size, size=s.size)
        value = _auc(s[index], y[index])
        if value is not None:
            values.append(value)
    if not values:
        return Interval(None, None, 0, seed, level)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(np.asarray(values), [tail, 100.0 - tail])
    return Interval(float(low), float(high), len(values), seed, level)


# --- calibration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationBin:
    """Scores normalised to 0..1 in [low, high) (the last bin includes 1)."""

    low: float
    high: float
    count: int
    mean_predicted: float | None
    observed_rate: float | None
    positives: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalise(scores: Sequence[float] | FloatArray, score_range: tuple[float, float]) -> FloatArray:
    """Scores mapped from the manifest's score range onto 0..1 (clipped)."""
    low, high = float(score_range[0]), float(score_range[1])
    if not high > low:
        raise MetricsInputError("score range must be [low, high] with low < high")
    result: FloatArray = np.clip((_scores(scores) - low) / (high - low), 0.0, 1.0)
    return result


def calibration(
    scores: Sequence[float] | FloatArray,
    labels: Sequence[int] | npt.NDArray[Any],
    score_range: tuple[float, float] = (0.0, 1.0),
    bins: int = CALIBRATION_BINS,
) -> list[CalibrationBin]:
    """Equal-width bins of the normalised score: count, mean predicted, observed rate."""
    if bins < 1:
        raise MetricsInputError("at least one calibration bin")
    s, y = _pair(scores, labels)
    p = normalise(s, score_range)
    index = np.minimum((p * bins).astype(int), bins - 1)
    table = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        table.append(
            CalibrationBin(
                low=b / bins,
                high=(b + 1) / bins,
                count=count,
                mean_predicted=float(p[inside].mean()) if count else None,
                observed_rate=float(y[inside].mean()) if count else None,
                positives=int(y[inside].sum()),
            )
        )
    return table


def scores_are_probabilities(score_range: tuple[float, float]) -> bool:
    return float(score_range[0]) == 0.0 and float(score_range[1]) == 1.0


def brier(
    scores: Sequence[float] | FloatArray, labels: Sequence[int] | npt.NDArray[Any]
) -> float | None:
    """Mean squared difference between probability and outcome; None without cases."""
    s, y = _pair(scores, labels)
    if s.size == 0:
        return None
    return float(np.mean((s - y.astype(np.float64)) ** 2))


# --- subgroups ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubgroupRow:
    key: str
    value: str
    count: int
    positives: int
    prevalence: Proportion
    sensitivity_doubtful: Proportion
    specificity_doubtful: Proportion
    sensitivity_sure: Proportion
    specificity_sure: Proportion
    auc: float | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "value": self.value,
            "count": self.count,
            "positives": self.positives,
            "prevalence": self.prevalence.as_dict(),
            "sensitivity_doubtful": self.sensitivity_doubtful.as_dict(),
            "specificity_doubtful": self.specificity_doubtful.as_dict(),
            "sensitivity_sure": self.sensitivity_sure.as_dict(),
            "specificity_sure": self.specificity_sure.as_dict(),
            "auc": self.auc,
        }


def subgroups(
    key: str,
    groups: Sequence[Hashable],
    scores: Sequence[float] | FloatArray,
    labels: Sequence[int] | npt.NDArray[Any],
    predicted_doubtful: Sequence[bool] | BoolArray,
    predicted_sure: Sequence[bool] | BoolArray,
) -> list[SubgroupRow]:
    """One row per value of `groups` (in sorted order; "unknown" for None or "")."""
    s, y = _pair(scores, labels)
    doubtful = np.asarray(predicted_doubtful, dtype=bool).reshape(-1)
    sure = np.asarray(predicted_sure, dtype=bool).reshape(-1)
    names = np.array(["unknown" if g is None or g == "" else str(g) for g in groups], dtype=object)
    if not (names.size == s.size == doubtful.size == sure.size):
        raise MetricsInputError("subgroup inputs differ in length")
    rows = []
    for value in sorted(set(names.tolist())):
        inside = names == value
        at_doubtful = confusion_of(doubtful[inside], y[inside])
        at_sure = confusion_of(sure[inside], y[inside])
        rows.append(
            SubgroupRow(
                key=key,
                value=str(value),
                count=int(inside.sum()),
                positives=int(y[inside].sum()),
                prevalence=prevalence(y[inside]),
                sensitivity_doubtful=at_doubtful.sensitivity,
                specificity_doubtful=at_doubtful.specificity,
                sensitivity_sure=at_sure.sensitivity,
                specificity_sure=at_sure.specificity,
                auc=_auc(s[inside], y[inside]),
            )
        )
    return rows
