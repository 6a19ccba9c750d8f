"""Low-rank forecasting: predict the next observation of a rotating low-dimensional latent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kpflow.tasks._base import Task, converter, nonnegative_int, positive_int, real, set_field

__all__ = ["LowRankForecast"]


@dataclass(frozen=True, kw_only=True)
class LowRankForecast(Task):
    """Forecast the next observation of a latent rotated by a fixed random rotation.

    A latent z_t of dimension ``n_latent`` evolves as z_{t+1} = Q z_t, with Q a fixed
    random rotation (orthogonal, det Q = +1, Haar distributed), and is observed as
    o_t = C z_t + ε_t in ``n_obs`` dimensions through a fixed random embedding C
    (entries N(0, 1/n_latent)), with observation noise ε_t ~ N(0, noise² I).  Q and C are
    the task's structure, fixed by ``seed`` (:meth:`maps`); each trial draws its own
    z_0 ~ N(0, I) from the ``rng`` of :meth:`sample`.

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

    @property
    def n_in(self) -> int:
        """``n_obs``."""
        return self.n_obs

    @property
    def n_out(self) -> int:
        """``n_obs``."""
        return self.n_obs

    def _host_maps(self) -> tuple[np.ndarray, np.ndarray]:
        gen = np.random.default_rng(self.seed)
        n = self.n_latent
        q, r = np.linalg.qr(gen.standard_normal((n, n)))
        q = q * np.sign(np.diag(r))[None, :]  # Haar distributed on O(n)
        if np.linalg.det(q) < 0:
            q[:, 0] = -q[:, 0]  # a rotation: det = +1
        c = gen.standard_normal((self.n_obs, n)) / np.sqrt(n)
        return q, c

    def maps(self, *, like: Any = None, dtype: Any = None, device: Any = None) -> tuple[Any, Any]:
        """The fixed rotation Q ``(n_latent, n_latent)`` and embedding C ``(n_obs, n_latent)``.

        Column-vector convention: z_{t+1} = Q z_t and o_t = C z_t (+ noise).  ``like``,
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
        z = np.empty((batch, self.T + 1, self.n_latent))
        z[:, 0] = gen.standard_normal((batch, self.n_latent))
        for t in range(self.T):
            z[:, t + 1] = z[:, t] @ q.T
        obs = z @ c.T
        if self.noise > 0:
            obs = obs + self.noise * gen.standard_normal(obs.shape)
        return obs[:, :-1].copy(), obs[:, 1:].copy(), np.ones((batch, self.T))
