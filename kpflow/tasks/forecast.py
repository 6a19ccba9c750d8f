"""Low-rank forecasting: predict the next observation of a rotating low-dimensional latent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kpflow.tasks._base import Task, converter, nonnegative_int, positive_int, real, set_field

__all__ = ["LowRankForecast"]

_KINDS = ("rotation", "sine")


@dataclass(frozen=True, kw_only=True)
class LowRankForecast(Task):
    """Forecast the next observation of a latent rotated by a fixed random rotation.

    A latent z_t of dimension ``n_latent`` evolves as z_{t+1} = Q z_t, with Q a fixed
    random rotation (orthogonal, det Q = +1, Haar distributed), and is observed as
    o_t = C z_t + ε_t in ``n_obs`` dimensions through a fixed random embedding C
    (entries N(0, 1/n_latent)), with observation noise ε_t ~ N(0, noise² I).  Q and C are
    the task's structure, fixed by ``seed`` (:meth:`maps`); each trial draws its own
    z_0 ~ N(0, I) from the ``rng`` of :meth:`sample`.

    ``kind="sine"`` is the research code's forecasting task (meeree/kpflow): the latent
    contracts towards a rotation, z_{t+1} = 0.8 z_t + 0.2 A z_t (A a fixed random
    orthogonal matrix), o_t = C z_t + ε_t with C entries N(0, 1), and the network sees
    ``D_inp`` nonlinear features of the observation and predicts ``D_targ`` of the next
    one: inputs sin(W_inp o_t + b_inp), targets sin(W_targ o_{t+1} + b_targ), with W and b
    entries N(0, 1), all fixed by ``seed`` (:meth:`maps`, :meth:`feature_maps`).
    :meth:`research` gives its defaults (T = 30, research noise 0.01).

    Parameters
    ----------
    n_latent : int
        Latent dimension (default 10).
    n_obs : int
        Observation dimension, at least ``n_latent`` (default 100).
    T : int
        Number of steps (default 50).
    noise : float
        Standard deviation of the observation noise (default 0).
    seed : int
        Seed of the fixed maps Q and C (default 0).
    kind : {"rotation", "sine"}
        The task (default ``"rotation"``).
    D_inp, D_targ : int, optional
        ``kind="sine"`` only: the input and target feature dimensions (default ``n_obs``).

    Notes
    -----
    ``sample`` gives inputs o_0 … o_{T−1} and targets o_1 … o_T, both ``(B, T, n_obs)``
    (so ``targets[:, t] == inputs[:, t + 1]``), and a mask of ones ``(B, T)``.

    Examples
    --------
    >>> import numpy as np
    >>> from kpflow.tasks import LowRankForecast
    >>> task = LowRankForecast(n_latent=10, n_obs=100, T=50)
    >>> x, y, mask = task.sample(4, 0)
    >>> x.shape, y.shape, mask.shape
    ((4, 50, 100), (4, 50, 100), (4, 50))
    >>> bool((y[:, :-1] == x[:, 1:]).all())
    True
    >>> Q, C = task.maps()
    >>> Q.shape, C.shape, bool(np.allclose(Q.T @ Q, np.eye(10)))
    ((10, 10), (100, 10), True)
    """

    n_latent: int = 10
    n_obs: int = 100
    T: int = 50
    noise: float = 0.0
    seed: int = 0
    kind: str = "rotation"
    D_inp: int | None = None
    D_targ: int | None = None

    def __post_init__(self) -> None:
        where = "LowRankForecast"
        set_field(self, "n_latent", positive_int(self.n_latent, "n_latent", where))
        set_field(self, "n_obs", positive_int(self.n_obs, "n_obs", where))
        if self.n_obs < self.n_latent:
            msg = f"{where}: expected n_obs to be at least n_latent={self.n_latent}, got {self.n_obs!r}"
            raise ValueError(msg)
        set_field(self, "T", positive_int(self.T, "T", where))
        set_field(self, "noise", real(self.noise, "noise", where, low=0.0))
        set_field(self, "seed", nonnegative_int(self.seed, "seed", where))
        if self.kind not in _KINDS:
            msg = f"{where}: expected kind to be one of {_KINDS}, got {self.kind!r}"
            raise ValueError(msg)
        for name in ("D_inp", "D_targ"):
            value = getattr(self, name)
            if value is None:
                continue
            if self.kind != "sine":
                msg = (
                    f"{where}: {name} is a knob of kind='sine', got {name}={value!r} with kind={self.kind!r}"
                )
                raise ValueError(msg)
            set_field(self, name, positive_int(value, name, where))

    @classmethod
    def research(
        cls, *, D_inp: int = 100, D_targ: int = 100, T: int = 30, noise: bool = True, seed: int = 0
    ) -> LowRankForecast:
        """The research code's forecasting task: ``kind="sine"``, 10-d latent in 100-d, T = 30.

        ``D_inp`` and ``D_targ`` are the dimension knobs of the paper's rank phase diagram;
        ``noise=True`` adds the research code's observation noise (σ = 0.01).

        Examples
        --------
        >>> from kpflow.tasks import LowRankForecast
        >>> task = LowRankForecast.research(D_inp=26, D_targ=10)
        >>> x, y, mask = task.sample(3, 0)
        >>> x.shape, y.shape, float(abs(x).max()) <= 1.0
        ((3, 30, 26), (3, 30, 10), True)
        """
        return cls(
            n_latent=10,
            n_obs=100,
            T=T,
            noise=0.01 if noise else 0.0,
            seed=seed,
            kind="sine",
            D_inp=D_inp,
            D_targ=D_targ,
        )

    @property
    def n_in(self) -> int:
        """``n_obs`` (``kind="sine"``: ``D_inp``, default ``n_obs``)."""
        return self.n_obs if self.D_inp is None else self.D_inp

    @property
    def n_out(self) -> int:
        """``n_obs`` (``kind="sine"``: ``D_targ``, default ``n_obs``)."""
        return self.n_obs if self.D_targ is None else self.D_targ

    def _host_maps(self) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "sine":
            a, c, *_ = self._host_sine()
            return a, c
        gen = np.random.default_rng(self.seed)
        n = self.n_latent
        q, r = np.linalg.qr(gen.standard_normal((n, n)))
        q = q * np.sign(np.diag(r))[None, :]  # Haar distributed on O(n)
        if np.linalg.det(q) < 0:
            q[:, 0] = -q[:, 0]  # a rotation: det = +1
        c = gen.standard_normal((self.n_obs, n)) / np.sqrt(n)
        return q, c

    def _host_sine(self) -> tuple[np.ndarray, ...]:
        gen = np.random.default_rng(self.seed)
        n, d = self.n_latent, self.n_obs
        a, _ = np.linalg.qr(gen.standard_normal((n, n)))
        c = gen.standard_normal((d, n))
        w_inp, b_inp = gen.standard_normal((self.n_in, d)), gen.standard_normal(self.n_in)
        w_targ, b_targ = gen.standard_normal((self.n_out, d)), gen.standard_normal(self.n_out)
        return a, c, w_inp, b_inp, w_targ, b_targ

    def feature_maps(self, *, like: Any = None, dtype: Any = None, device: Any = None) -> tuple[Any, ...]:
        """``kind="sine"``: W_inp ``(D_inp, n_obs)``, b_inp, W_targ ``(D_targ, n_obs)``, b_targ.

        Examples
        --------
        >>> from kpflow.tasks import LowRankForecast
        >>> W_inp, b_inp, W_targ, b_targ = LowRankForecast.research(D_inp=5, D_targ=2).feature_maps()
        >>> W_inp.shape, b_inp.shape, W_targ.shape, b_targ.shape
        ((5, 100), (5,), (2, 100), (2,))
        """
        if self.kind != "sine":
            msg = f"LowRankForecast.feature_maps: feature maps belong to kind='sine', got kind={self.kind!r}"
            raise ValueError(msg)
        convert = converter(like, dtype, device, "LowRankForecast.feature_maps")
        return tuple(convert(m) for m in self._host_sine()[2:])

    def maps(self, *, like: Any = None, dtype: Any = None, device: Any = None) -> tuple[Any, Any]:
        """The fixed rotation Q ``(n_latent, n_latent)`` and embedding C ``(n_obs, n_latent)``.

        Column-vector convention: z_{t+1} = Q z_t and o_t = C z_t (+ noise); for
        ``kind="sine"`` the first is A of z_{t+1} = 0.8 z_t + 0.2 A z_t.  ``like``,
        ``dtype`` and ``device`` as for :meth:`sample`.

        Examples
        --------
        >>> import numpy as np
        >>> from kpflow.tasks import LowRankForecast
        >>> Q, C = LowRankForecast(n_latent=3, n_obs=5).maps()
        >>> round(float(np.linalg.det(Q)), 6), C.shape
        (1.0, (5, 3))
        """
        convert = converter(like, dtype, device, "LowRankForecast.maps")
        q, c = self._host_maps()
        return convert(q), convert(c)

    def _draw(self, batch: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        q, c = self._host_maps()
        step = q.T if self.kind == "rotation" else 0.8 * np.eye(self.n_latent) + 0.2 * q.T
        z = np.empty((batch, self.T + 1, self.n_latent))
        z[:, 0] = gen.standard_normal((batch, self.n_latent))
        for t in range(self.T):
            z[:, t + 1] = z[:, t] @ step
        obs = z @ c.T
        if self.noise > 0:
            obs = obs + self.noise * gen.standard_normal(obs.shape)
        if self.kind == "sine":
            _, _, w_inp, b_inp, w_targ, b_targ = self._host_sine()
            x = np.sin(obs[:, :-1] @ w_inp.T + b_inp)
            y = np.sin(obs[:, 1:] @ w_targ.T + b_targ)
            return x, y, np.ones((batch, self.T))
        return obs[:, :-1].copy(), obs[:, 1:].copy(), np.ones((batch, self.T))
