"""Mean ± std over seeds and Welch's t-test, without scipy.

The two-sided p-value of Student's t with ν degrees of freedom is I_{ν/(ν+t²)}(ν/2, 1/2), where I is
the regularized incomplete beta function, evaluated here with the Lentz continued fraction
(Numerical Recipes §6.4). Accurate to ~1e-12, which is far more than a significance mark needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SIGNIFICANCE_LEVELS = ((0.01, "**"), (0.05, "*"))
TEST_DESCRIPTION = (
    "Welch's two-sided t-test over seeds against GlobalGC at the same setting (equal in every column but the "
    "method and its clip.* keys): * p < 0.05, ** p < 0.01; "
    "no mark when either side has fewer than 2 runs or both sides have zero variance"
)


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The continued fraction converges fast for x < (a+1)/(a+b+2); use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a).
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_two_sided_p(t: float, dof: float) -> float:
    """P(|T| >= |t|) for Student's t with `dof` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(dof / 2.0, 0.5, dof / (dof + t * t))


@dataclass(frozen=True)
class WelchResult:
    t: float
    dof: float
    p: float


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> WelchResult | None:
    """Welch's unequal-variance t-test of mean(a) vs mean(b); None when it is undefined."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) < 2 or len(y) < 2:
        return None
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    if vx + vy == 0.0:
        return None
    t = (x.mean() - y.mean()) / math.sqrt(vx + vy)
    dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return WelchResult(t=float(t), dof=float(dof), p=student_t_two_sided_p(float(t), float(dof)))


def significance_mark(p: float | None) -> str:
    if p is None:
        return ""
    return next((mark for level, mark in SIGNIFICANCE_LEVELS if p < level), "")


@dataclass(frozen=True)
class Summary:
    """mean ± sample std over the finite values of one table cell."""

    mean: float
    std: float
    n: int


def summarize(values: Sequence[float]) -> Summary | None:
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return None
    return Summary(mean=float(x.mean()), std=float(x.std(ddof=1)) if len(x) > 1 else float("nan"), n=len(x))
