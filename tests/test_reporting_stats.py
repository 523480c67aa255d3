"""Welch's t-test and the Student-t CDF behind the tables' significance marks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adagc_repro.reporting.stats import (
    regularized_incomplete_beta,
    significance_mark,
    student_t_two_sided_p,
    summarize,
    welch_t_test,
)


def test_incomplete_beta_closed_forms():
    # I_x(1, 1) = x; I_x(a, 1) = x^a; I_x(1, b) = 1 - (1 - x)^b; symmetry I_x(a, b) = 1 - I_{1-x}(b, a).
    for x in (0.0, 0.1, 0.5, 0.93, 1.0):
        assert regularized_incomplete_beta(1.0, 1.0, x) == pytest.approx(x, abs=1e-14)
        assert regularized_incomplete_beta(3.5, 1.0, x) == pytest.approx(x**3.5, abs=1e-13)
        assert regularized_incomplete_beta(1.0, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, abs=1e-13)
        assert regularized_incomplete_beta(2.2, 7.0, x) == pytest.approx(
            1 - regularized_incomplete_beta(7.0, 2.2, 1 - x), abs=1e-13
        )
    with pytest.raises(ValueError):
        regularized_incomplete_beta(1.0, 1.0, 1.5)


def test_student_t_known_values():
    # Cauchy (1 dof): P(|T| >= 1) = 1/2; large dof tends to the normal: P(|Z| >= 1.959964) = 0.05.
    assert student_t_two_sided_p(1.0, 1.0) == pytest.approx(0.5, abs=1e-12)
    assert student_t_two_sided_p(1.959963985, 1e7) == pytest.approx(0.05, abs=1e-6)
    assert student_t_two_sided_p(0.0, 4.0) == pytest.approx(1.0)
    assert student_t_two_sided_p(math.inf, 4.0) == 0.0


def test_welch_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(200):
        n1, n2 = rng.integers(2, 9, size=2)
        a = rng.normal(0.0, rng.uniform(0.05, 3.0), n1)
        b = rng.normal(rng.uniform(-2.0, 2.0), rng.uniform(0.05, 3.0), n2)
        ours, theirs = welch_t_test(a, b), stats.ttest_ind(a, b, equal_var=False)
        assert ours.t == pytest.approx(theirs.statistic, rel=1e-10, abs=1e-12)
        assert ours.p == pytest.approx(theirs.pvalue, rel=1e-9, abs=1e-13)


def test_welch_undefined_cases():
    assert welch_t_test([1.0], [2.0, 3.0]) is None  # n < 2
    assert welch_t_test([1.0, 1.0], [2.0, 2.0]) is None  # no variance on either side
    assert welch_t_test([1.0, float("nan"), 2.0], [5.0, 6.0, 7.0]).p < 0.05  # NaN ignored, n = 2 left


def test_significance_marks_and_summaries():
    assert [significance_mark(p) for p in (None, 0.2, 0.049, 0.0099)] == ["", "", "*", "**"]
    summary = summarize([1.0, 2.0, None, float("nan"), 3.0])
    assert (summary.mean, summary.std, summary.n) == (2.0, 1.0, 3)
    assert math.isnan(summarize([4.0]).std)
    assert summarize([None]) is None
