"""Small-sample statistics of the randomized estimators: Student's factor and calibrated means.

A standard error computed from ``m`` samples is itself noisy; with few samples ``±1.96·se``
covers the truth less than 95% of the time.  :func:`student_factor` widens it to Student's
interval, and :func:`calibrated_mean` applies it to the mean of i.i.d. samples.  Used by the
trace, effective-rank and alignment estimators alike.
"""

from __future__ import annotations

import math
from typing import Any

from kpflow.linalg._common import mean_and_error

__all__ = ["calibrated_mean", "student_factor"]


#: Two-sided 97.5% quantiles of Student's t with 1, 2, ..., 30 degrees of freedom.
# fmt: off
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)
# fmt: on


def student_factor(m: int) -> float:
    """``t₀.₉₇₅(m − 1) / z₀.₉₇₅``: the factor that turns the sample standard error of a mean of
    ``m`` samples into one whose ``±1.96·error`` is Student's 95% interval.

    Beyond 30 degrees of freedom, the Cornish–Fisher expansion of the t quantile (error
    below 1e-4).

    Examples
    --------
    >>> from kpflow.linalg._statistics import student_factor
    >>> round(student_factor(4), 3), round(student_factor(1000), 4)
    (1.624, 1.0012)
    """
    nu = m - 1
    if nu < 1:
        return math.inf
    if nu <= len(_T975):
        return _T975[nu - 1] / 1.959964
    z = 1.959964
    t = z + (z**3 + z) / (4 * nu) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * nu**2)
    return t / z


def calibrated_mean(xp: Any, samples: Any) -> tuple[Any, Any]:
    """The mean of ``m`` i.i.d. samples and its standard error scaled by :func:`student_factor`.

    ``None`` for the error when ``m < 2``.
    """
    mean, se = mean_and_error(xp, samples)
    return mean, None if se is None else se * student_factor(samples.shape[0])
