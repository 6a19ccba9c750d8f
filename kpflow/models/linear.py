"""A linear readout y = C z + c, as ``torch.nn.Linear``."""

from __future__ import annotations

from typing import Any

import numpy as np

from kpflow._array import array_namespace, device_of, namespace_name
from kpflow.models.base import check_size, draw_uniform
from kpflow.models.sites_table import SiteDecl, Term, declared_shapes

__all__ = ["Linear"]


class Linear:
    """A linear readout y = C z + c (``torch.nn.Linear``): ``weight`` C (n_out, n_in), ``bias`` c.

    Parameters
    ----------
    n_in, n_out : int
    bias : bool

    Examples
    --------
    >>> import array_api_strict as xp
    >>> from kpflow.models import Linear
    >>> readout = Linear(3, 2)
    >>> params = readout.init(0, like=xp.zeros(1))
    >>> readout.apply(params, xp.ones((4, 5, 3))).shape
    (4, 5, 2)
    """

    def __init__(self, n_in: int, n_out: int, *, bias: bool = True) -> None:
        self.n_in = check_size(n_in, "n_in", "Linear")
        self.n_out = check_size(n_out, "n_out", "Linear")
        self.bias = bool(bias)

    def site_table(self, prefix: str = "") -> tuple[SiteDecl, ...]:
        """The readout's one site ``readout``: C_w = [Cᵀ; c] on the features z (and 1), D = I.

        ``prefix`` goes in front of the parameter names (the output NTK's ``readout.``).

        Examples
        --------
        >>> from kpflow.models import Linear
        >>> Linear(3, 2).site_table("readout.")[0].rows()
        [('readout.weight', (0, 2)), ('readout.bias', (0, 2))]
        """
        full = (0, self.n_out)
        terms = [Term(prefix + "weight", full, "z", self.n_in)]
        if self.bias:
            terms.append(Term(prefix + "bias", full, "1"))
        return (SiteDecl("readout", tuple(terms), "scaled", "I"),)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """``weight`` (n_out, n_in) and ``bias`` (n_out,), read off :meth:`site_table`."""
        return declared_shapes(self.site_table())

    def init(
        self, rng: Any = None, *, like: Any = None, dtype: Any = None, device: Any = None
    ) -> dict[str, Any]:
        """torch's default U(−1/√n_in, 1/√n_in), drawn on the host; numpy float64 without ``like``."""
        return draw_uniform(
            self.param_shapes(),
            1.0 / float(np.sqrt(self.n_in)),
            rng,
            like=like,
            dtype=dtype,
            device=device,
            where="Linear.init",
        )

    def check_params(self, params: Any, where: str, *, like: Any = None) -> None:
        """Check keys, shapes, and (with ``like``) namespace, dtype and device of ``params``."""
        if not isinstance(params, dict):
            msg = f"{where}: expected the readout params to be a dict of arrays, got {type(params).__name__}"
            raise TypeError(msg)
        shapes = self.param_shapes()
        if set(params) != set(shapes):
            msg = f"{where}: expected readout params with keys {sorted(shapes)}, got {sorted(params)}"
            raise ValueError(msg)
        for k, s in shapes.items():
            a = params[k]
            if tuple(a.shape) != s:
                msg = f"{where}: expected readout params[{k!r}] of shape {s}, got {tuple(a.shape)}"
                raise ValueError(msg)
            if like is not None:
                a_xp, xp = array_namespace(a, where=where), array_namespace(like)
                if a_xp is not xp:
                    msg = (
                        f"{where}: readout params[{k!r}] come from {namespace_name(a_xp)}, "
                        f"the states from {namespace_name(xp)}"
                    )
                    raise TypeError(msg)
                if a.dtype != like.dtype or device_of(a) != device_of(like):
                    msg = (
                        f"{where}: readout params[{k!r}] is {a.dtype} on {device_of(a)}, "
                        f"the states are {like.dtype} on {device_of(like)}"
                    )
                    raise TypeError(msg)

    def apply(self, params: dict[str, Any], z: Any) -> Any:
        """y = z Cᵀ + c on the last axis of ``z`` (..., n_in) -> (..., n_out)."""
        xp = array_namespace(z)
        y = z @ xp.matrix_transpose(params["weight"])
        if self.bias:
            y = y + params["bias"]
        return y

    def __repr__(self) -> str:
        return f"Linear(n_in={self.n_in}, n_out={self.n_out}, bias={self.bias})"
