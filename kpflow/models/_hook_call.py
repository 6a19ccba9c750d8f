"""The ``site`` hook of user-written cells: the callable a step routes its weight uses through.

:class:`_Hook` computes ``site(name, a, rows=...)`` (``a @ W[lo:hi].T``, a bias ``b[lo:hi]``),
records each call, checks a replayed step against the recorded calls and adds the
perturbation the autodiff rule differentiates.  It lives apart from
:mod:`kpflow.models.hooks` so that the derivative rules import it without importing the
models.
"""

from __future__ import annotations

from typing import Any

from kpflow._array import array_namespace

__all__: list[str] = []


class _Hook:
    """The ``site`` callable handed to a user step: one instance per evaluation of the step.

    Records every call (name, site variable or None for a bias) in order; with ``eps`` it
    adds ``eps[c]`` to the output of call c (the perturbation that D_c differentiates),
    and with ``plan`` it checks that the calls come in the recorded order.
    """

    def __init__(
        self,
        params: dict[str, Any],
        shapes: dict[str, tuple[int, ...]],
        where: str,
        *,
        eps: dict[int, Any] | None = None,
        plan: tuple | None = None,
    ) -> None:
        self.params, self.shapes, self.where = params, shapes, where
        self.eps, self.plan = eps, plan
        self.calls: list[tuple[str, Any, tuple[int, int]]] = []

    def __call__(self, name: Any, a: Any = None, *, rows: Any = None) -> Any:
        where = self.where
        if not isinstance(name, str) or name not in self.shapes:
            msg = f"{where}: site({name!r}) names no parameter; param_shapes declares {sorted(self.shapes)}"
            raise ValueError(msg)
        shape = self.shapes[name]
        lo, hi = _check_rows(rows, name, shape[0], where)
        W = self.params[name]
        if (lo, hi) != (0, shape[0]):
            W = W[lo:hi, ...]
        if a is None:
            if len(shape) != 1:
                msg = (
                    f"{where}: site({name!r}) without a site variable is a bias call, but "
                    f"params[{name!r}] has shape {shape}; call site({name!r}, a) for a weight"
                )
                raise ValueError(msg)
            u = W
        else:
            if len(shape) != 2:
                msg = (
                    f"{where}: site({name!r}, a) is a weight call, but params[{name!r}] has shape "
                    f"{shape} (a bias); call site({name!r}) for a bias"
                )
                raise ValueError(msg)
            if a.ndim < 1 or int(a.shape[-1]) != shape[1]:
                msg = (
                    f"{where}: site({name!r}, a) expected a site variable a of shape (..., {shape[1]}) "
                    f"(params[{name!r}] has shape {shape}), got {tuple(a.shape)}"
                )
                raise ValueError(msg)
            xp = array_namespace(a, W)
            u = a @ xp.matrix_transpose(W)
        c = len(self.calls)
        if self.plan is not None and (c >= len(self.plan) or tuple(self.plan[c][::2]) != (name, (lo, hi))):
            expected = _call_text(*self.plan[c]) if c < len(self.plan) else "no further call"
            msg = (
                f"{where}: hook call {c} is {_call_text(name, a is None, (lo, hi))} but the recorded "
                f"step made {expected} there; the sequence of hook calls (names and rows) must not "
                "depend on the values of the arrays"
            )
            raise ValueError(msg)
        self.calls.append((name, a, (lo, hi)))
        if self.eps is not None and c in self.eps:
            # a site of this call's rows perturbs them; a site of the whole weight (calls with
            # overlapping rows) gives the full width, of which this call moves rows lo:hi
            e = self.eps[c]
            if hi - lo != shape[0] and int(e.shape[-1]) == shape[0]:
                e = e[..., lo:hi]
            u = u + e
        return u


def _check_rows(rows: Any, name: str, n_rows: int, where: str) -> tuple[int, int]:
    """``rows`` of a hook call as (lo, hi), checked against the parameter's ``n_rows`` rows."""
    if rows is None:
        return (0, n_rows)
    ok = isinstance(rows, tuple | list) and len(rows) == 2
    ok = ok and all(isinstance(r, int) and not isinstance(r, bool) for r in rows)
    if not ok or not 0 <= rows[0] < rows[1] <= n_rows:
        msg = (
            f"{where}: site({name!r}, rows=...) expected rows=(lo, hi), two ints with "
            f"0 <= lo < hi <= {n_rows} (params[{name!r}] has {n_rows} rows), got {rows!r}"
        )
        raise ValueError(msg)
    return (int(rows[0]), int(rows[1]))


def _call_text(name: str, bias: bool, rows: tuple[int, int]) -> str:
    args = repr(name) if bias else f"{name!r}, a"
    return f"site({args}, rows={rows})"


def _check_param_shapes(param_shapes: Any, where: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(param_shapes, dict) or not param_shapes:
        msg = f"{where}: expected param_shapes to be a non-empty dict of name -> shape, got {param_shapes!r}"
        raise ValueError(msg)
    out: dict[str, tuple[int, ...]] = {}
    for name, shape in param_shapes.items():
        ok = isinstance(name, str) and isinstance(shape, tuple | list) and len(shape) in (1, 2)
        ok = ok and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)
        if not ok:
            msg = (
                f"{where}: expected param_shapes[{name!r}] to be (out, in) for a weight or (out,) "
                f"for a bias, with positive ints, got {shape!r}"
            )
            raise ValueError(msg)
        out[name] = tuple(int(n) for n in shape)
    return out
