"""Input checks of the public calls of :mod:`kpflow.linalg`: each error names the call and the argument."""

from __future__ import annotations

import math
import numbers
from typing import Any

from kpflow.operators.base import LinearOperator

__all__ = ["check_budget", "check_k", "check_method", "check_operator", "check_square", "check_tol"]


def check_operator(A: Any, where: str, name: str = "A") -> LinearOperator:
    """``A`` must be a :class:`LinearOperator`."""
    if not isinstance(A, LinearOperator):
        msg = f"{where}: expected {name} to be a kpflow LinearOperator, got {type(A).__name__}"
        raise TypeError(msg)
    return A


def check_square(A: LinearOperator, where: str, name: str = "A") -> None:
    """``A`` must map a tensor shape to itself."""
    if A.shape_in != A.shape_out:
        msg = (
            f"{where}: expected a square operator {name} (shape_in == shape_out), got "
            f"shape_in={A.shape_in} and shape_out={A.shape_out}"
        )
        raise ValueError(msg)


def check_method(method: Any, allowed: tuple[str, ...], where: str) -> str:
    """``method`` must be one of ``allowed``."""
    if not isinstance(method, str) or method not in allowed:
        msg = f"{where}: unknown method {method!r}; expected one of {list(allowed)}"
        raise ValueError(msg)
    return method


def check_k(k: Any, n: int, where: str, what: str = "the dimension") -> int:
    """``k`` must be an int with ``1 <= k <= n``."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        msg = f"{where}: expected k to be a positive int, got {k!r}"
        raise TypeError(msg)
    k = int(k)
    if k < 1:
        msg = f"{where}: expected k >= 1, got k={k}"
        raise ValueError(msg)
    if k > n:
        msg = f"{where}: k={k} is larger than {what} ({n}); at most {n} pairs exist"
        raise ValueError(msg)
    return k


def check_tol(tol: Any, where: str, *, positive: bool = False, name: str = "tol") -> float:
    """``tol`` must be a finite real number, ``>= 0`` (``> 0`` with ``positive``); returns it as a float.

    Examples
    --------
    >>> from kpflow.linalg._common import check_tol
    >>> check_tol(1e-8, "f")
    1e-08
    >>> check_tol(float("nan"), "f")
    Traceback (most recent call last):
    ...
    ValueError: f: expected tol to be a finite number >= 0, got nan
    """
    what = "> 0" if positive else ">= 0"
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        msg = f"{where}: expected {name} to be a finite number {what}, got {tol!r}"
        raise TypeError(msg)
    value = float(tol)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        msg = f"{where}: expected {name} to be a finite number {what}, got {tol!r}"
        raise ValueError(msg)
    return value


def check_budget(num_matvecs: Any, minimum: int, where: str, method: str) -> int:
    """``num_matvecs`` must be an int of at least ``minimum``."""
    if isinstance(num_matvecs, bool) or not isinstance(num_matvecs, numbers.Integral):
        msg = f"{where}: expected num_matvecs to be an int, got {num_matvecs!r}"
        raise TypeError(msg)
    if num_matvecs < minimum:
        msg = (
            f"{where}: method {method!r} needs num_matvecs >= {minimum}, got {num_matvecs}; "
            "raise the budget or choose another method"
        )
        raise ValueError(msg)
    return int(num_matvecs)
