"""The jax adapter: ``jax.numpy``, jax's transforms, and probe blocks split across devices.

kpflow never turns on ``jax_enable_x64``: that is the user's choice.  Without
it jax has no float64 arrays, and kpflow computes in the float32 it is given.

Several devices
---------------
jax computes where the data are, and kpflow follows: the opt-in to several devices is
to place the model's arrays (``params`` and ``x``) *replicated* on them, with
:func:`replicate`.  Every array kpflow then derives (states, site variables, the
operators' factors, the solvers' probes) is replicated on the same devices, and
:meth:`JaxBackend.distribute` splits the probe axis of every block the solvers of
:mod:`kpflow.linalg` push through an operator across them (``NamedSharding`` over a
``("probes",)`` mesh).  Arrays on one device (the default) are left alone.
:func:`shard_probes` turns the splitting off (for comparisons), and
:func:`sharded_matmat` is a direct operator product with the split.  See
``docs/jax.md``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from kpflow.backends._base import Backend
from kpflow.backends._jax_host import HOST_KERNEL_ENTRIES, host_or_compiled

__all__ = [
    "CACHE_ENV",
    "PROBE_AXIS",
    "JaxBackend",
    "adapter",
    "compilation_cache_dir",
    "enable_compilation_cache",
    "from_module",
    "replicate",
    "shard_probes",
    "sharded_matmat",
]

#: The name of the mesh axis the probe axis of a block is split over.
PROBE_AXIS = "probes"

#: Whether :meth:`JaxBackend.distribute` splits blocks (see :func:`shard_probes`).
_SHARD_PROBES: contextvars.ContextVar[bool] = contextvars.ContextVar("kpflow_jax_shard_probes", default=True)

#: Random draws are made in pieces of this many entries, each from ``fold_in(key, i)`` with one
#: compiled generator (jax compiles its generator for every new shape, which would cost a
#: compilation for nearly every probe block), then joined and cut to shape.
_PIECE = 2**16


@functools.partial(jax.jit, static_argnames=("kind", "dtype"))
def _piece(key: Any, i: Any, kind: str, dtype: Any) -> Any:
    key = jax.random.fold_in(key, i)
    if kind == "normal":
        return jax.random.normal(key, (_PIECE,), dtype=dtype)
    return jax.random.rademacher(key, (_PIECE,), dtype=jnp.int8).astype(dtype)


@functools.partial(jax.jit, static_argnames=("shape",))
def _joined(pieces: tuple, shape: tuple[int, ...]) -> Any:
    """The pieces of a draw joined, cut and shaped: one program per shape (not three)."""
    flat = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces)
    return jnp.reshape(flat[: math.prod(shape)], shape)


def _on_accelerator(device: Any) -> bool:
    """Whether ``device`` (a device, a sharding, or None for jax's default) is not the CPU."""
    if device is None:
        device = jax.config.read("jax_default_device") or jax.devices()[0]
    if isinstance(device, str):
        return device != "cpu"
    devices = getattr(device, "device_set", None) or (device,)
    return any(getattr(d, "platform", "cpu") != "cpu" for d in devices)


class JaxBackend(Backend):
    """jax arrays, with ``jax.jvp``, ``jax.vjp``, ``jax.vmap``, ``jax.jacrev``, ``jax.jit``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from kpflow.backends.jax import adapter
    >>> out, tangent = adapter.jvp(jnp.sin, (jnp.zeros(2),), (jnp.ones(2),))
    >>> [float(t) for t in tangent]
    [1.0, 1.0]
    """

    name = "jax"
    has_autodiff = True
    compiles_per_shape = True

    def owns(self, x: Any) -> bool:
        return isinstance(x, jax.Array)

    def namespace(self) -> Any:
        return jnp

    def is_accelerator(self, device: Any) -> bool:
        return getattr(device, "platform", "cpu") != "cpu"

    def device_count(self, device: Any) -> int:
        if isinstance(device, jax.Device):
            return 1
        return max(1, len(getattr(device, "device_set", ())))

    def from_host(self, array: Any, *, dtype: Any, device: Any = None) -> Any:
        if isinstance(array, np.ndarray):
            # cast on the host and copy over: no program compiled per shape and dtype
            return jax.device_put(np.asarray(array, dtype=np.dtype(dtype)), device)
        return jnp.asarray(array, dtype=dtype, device=device)

    def _draw(self, kind: str, seed: int, shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
        if not _on_accelerator(device):
            # On the CPU the host's numpy draw is the device's own memory: no program compiled
            # (jax's generator compiles for every new shape and its lowering is slow).
            if kind == "normal":
                return super().random_normal(seed, shape, dtype=dtype, device=device)
            return super().random_rademacher(seed, shape, dtype=dtype, device=device)
        # Drawn where the key lives (jax computes where the data is): nothing crosses from the host.
        key = jax.random.key(seed)
        if device is not None:
            key = jax.device_put(key, device)
        size = math.prod(shape)
        pieces = [_piece(key, i, kind, dtype) for i in range(max(1, -(-size // _PIECE)))]
        return _joined(tuple(pieces), shape)

    def random_normal(self, seed: int, shape: tuple[int, ...], *, dtype: Any, device: Any = None) -> Any:
        return self._draw("normal", seed, tuple(shape), dtype, device)

    def random_rademacher(self, seed: int, shape: tuple[int, ...], *, dtype: Any, device: Any = None) -> Any:
        return self._draw("rademacher", seed, tuple(shape), dtype, device)

    # -- several devices ----------------------------------------------------------------------
    def distribute(self, block: Any) -> Any:
        """Split the probe axis 0 of ``block`` across the devices it is replicated on.

        A block replicated on ``n > 1`` devices (kpflow's probes are, when the model's
        arrays were placed with :func:`replicate`) is laid out with
        ``NamedSharding(Mesh(devices, ("probes",)), PartitionSpec("probes"))``, the
        devices in the block's own order: each device then computes the operator's
        product for ``k / n`` probes, and the operator's replicated arrays are already
        there.  When ``n`` does not divide ``k``, the probes are split ``g = gcd(k, n)``
        ways over a ``(g, n / g)`` mesh ``("probes", "replicas")`` (jax needs even
        splits; kpflow's padded blocks of 16, 32 or 64 rows split evenly over 2, 4, 8
        or 16 devices).  A block on one device, one already split another way, one
        spanning several processes, a traced array, or any block inside
        ``shard_probes(False)`` is returned as it is.

        Examples
        --------
        >>> import jax.numpy as jnp
        >>> from kpflow.backends.jax import adapter
        >>> block = jnp.ones((16, 3))                  # on one device: unchanged
        >>> adapter.distribute(block) is block
        True
        """
        if not _SHARD_PROBES.get() or not isinstance(block, jax.Array) or isinstance(block, jax.core.Tracer):
            return block
        if block.ndim == 0:
            return block
        sharding = block.sharding
        if (
            len(sharding.device_set) < 2
            or not sharding.is_fully_replicated
            or not sharding.is_fully_addressable
        ):
            return block
        devices = _device_order(sharding)
        if devices is None:
            return block
        target = _probe_sharding(devices, int(block.shape[0]))
        return block if target is None else jax.device_put(block, target)

    def jvp(self, f: Callable, primals: tuple, tangents: tuple) -> tuple[Any, Any]:
        # jax rejects tangents whose dtype differs from the primal's; cast them here.
        tangents = tuple(
            t.astype(p.dtype) if t.dtype != p.dtype else t for t, p in zip(tangents, primals, strict=True)
        )
        return jax.jvp(f, tuple(primals), tangents)

    def vjp(self, f: Callable, *primals: Any) -> tuple[Any, Callable]:
        return jax.vjp(f, *primals)

    def vmap(self, f: Callable, in_axes: Any = 0, out_axes: Any = 0) -> Callable:
        return jax.vmap(f, in_axes=in_axes, out_axes=out_axes)

    def jacrev(self, f: Callable, argnums: int | tuple[int, ...] = 0) -> Callable:
        return jax.jacrev(f, argnums=argnums)

    def custom_vjp(
        self,
        fn: Callable[..., Any],
        vjp: Callable[[tuple, Any, Any], tuple],
        *,
        where: str,
    ) -> Callable[..., Any]:
        """``jax.custom_vjp``: ``fn`` runs on the primal values, ``vjp`` gives the cotangents.

        Under ``jax.grad`` / ``jax.vjp`` outside ``jit`` the primal values are concrete, so
        ``fn`` may read them; a traced argument (``jax.jit``, ``jax.vmap``) raises a
        ``TypeError`` naming ``where``.

        Examples
        --------
        >>> import jax, jax.numpy as jnp
        >>> from kpflow.backends.jax import adapter
        >>> twice = adapter.custom_vjp(lambda a: 2 * a, lambda arrays, out, g: (2 * g,), where="twice")
        >>> [float(v) for v in jax.grad(lambda a: twice(a).sum())(jnp.ones(2))]
        [2.0, 2.0]
        """

        def concrete(arrays: tuple) -> tuple:
            if any(isinstance(a, jax.core.Tracer) for a in arrays):
                msg = (
                    f"{where}: needs concrete jax arrays (its solve reads their values), but runs "
                    "inside jax.jit or jax.vmap here; call it outside them (jax.grad and jax.vjp "
                    "work, and differentiate it by its own rule)"
                )
                raise TypeError(msg)
            return arrays

        @jax.custom_vjp
        def call(*arrays: Any) -> Any:
            return fn(*concrete(arrays))

        def forward(*arrays: Any) -> tuple[Any, tuple]:
            out = fn(*concrete(arrays))
            return out, (arrays, out)

        def backward(saved: tuple, g: Any) -> tuple:
            arrays, out = saved
            return tuple(vjp(arrays, out, g))

        call.defvjp(forward, backward)
        return call

    def jit(self, f: Callable, *, donate: tuple[int, ...] = ()) -> Callable:
        return jax.jit(f, donate_argnums=donate)

    #: The most entries (all array arguments together) of a kernel that :meth:`dense_kernel`
    #: runs in numpy on the host; larger ones are compiled.
    host_kernel_entries = HOST_KERNEL_ENTRIES

    def dense_kernel(self, fn: Callable, static: tuple, donate: tuple[int, ...] = ()) -> Callable:
        """``fn(xp, *static, *arrays)``: run by numpy on the host for arrays on one CPU device, else compiled.

        :func:`kpflow.linalg._backend.kernel` makes the dense algebra between operator
        products (orthogonalisations, sketches, small eigenproblems) one program per
        function and shape.  On the CPU, where jax's arrays are host memory that numpy reads
        without a copy, such a program costs far more to trace, lower and compile (0.05 s
        for one elementwise step, 0.5 s for a QR or a triangular solve) than numpy takes to
        run it (LAPACK and BLAS, as XLA's CPU runtime calls): up to
        :attr:`host_kernel_entries` entries in all (default 2²²), ``fn`` runs on
        ``array_api_compat.numpy`` and its arrays come back as jax arrays on the same device
        (same dtypes); nothing is donated there.  Arrays on an accelerator, on several
        devices, larger ones, and tracers (``fn`` called inside a user's ``jax.jit``) take
        the compiled program.
        """
        return host_or_compiled(
            self, jax.jit(functools.partial(fn, jnp, *static), donate_argnums=donate), fn, static
        )

    def scan(self, f: Callable, init: Any, xs: tuple, *, reverse: bool = False) -> tuple[Any, Any]:
        """``jax.lax.scan``: one compiled loop."""
        return jax.lax.scan(f, init, xs, reverse=reverse)


adapter = JaxBackend()


# -- several devices ---------------------------------------------------------------------------
def _device_order(sharding: Any) -> tuple[Any, ...] | None:
    """The devices of ``sharding`` in its own order (jax requires the same order in one computation)."""
    if isinstance(sharding, NamedSharding):
        return tuple(sharding.mesh.devices.flat)
    order = getattr(sharding, "_device_assignment", None)  # other shardings: jax's device order
    return None if order is None else tuple(order)


@functools.lru_cache(maxsize=64)
def _probe_sharding(devices: tuple[Any, ...], rows: int) -> NamedSharding | None:
    """The sharding that splits ``rows`` probes over ``devices`` (``None`` when no even split exists)."""
    n = len(devices)
    g = math.gcd(rows, n)
    if g < 2:
        return None
    grid = np.empty(n, dtype=object)
    grid[:] = devices
    mesh = Mesh(grid, (PROBE_AXIS,)) if g == n else Mesh(grid.reshape(g, n // g), (PROBE_AXIS, "replicas"))
    return NamedSharding(mesh, PartitionSpec(PROBE_AXIS))


def _check_devices(devices: Sequence[Any] | None) -> tuple[Any, ...]:
    if devices is None:
        return tuple(jax.devices())
    found = tuple(devices)
    if not found or not all(isinstance(d, jax.Device) for d in found):
        msg = f"replicate: expected devices to be a non-empty sequence of jax devices, got {devices!r}"
        raise TypeError(msg)
    if len(set(found)) != len(found):
        msg = f"replicate: devices holds a device twice: {list(found)}"
        raise ValueError(msg)
    platforms = {d.platform for d in found}
    if len(platforms) > 1:
        msg = f"replicate: devices of one platform are needed, got {sorted(platforms)}"
        raise ValueError(msg)
    return found


def replicate(tree: Any, devices: Sequence[Any] | None = None) -> Any:
    """Place every jax array of ``tree`` replicated on ``devices``: kpflow's opt-in to several devices.

    Put a model's ``params`` and inputs ``x`` here before ``model.run``: the states, site
    variables and operators derived from them are replicated on the same devices, and the
    solvers of :mod:`kpflow.linalg` then split every probe block across them
    (:meth:`JaxBackend.distribute`).  Results come back replicated, with the dtype given.

    Parameters
    ----------
    tree : pytree
        An array, or a dict / list / tuple of them (a params dict).  Leaves that are not
        jax arrays (Python scalars, ``None``) are returned unchanged; convert numpy arrays
        with ``jnp.asarray`` first.
    devices : sequence of jax devices, optional
        Devices of one platform, in the order the mesh uses; default ``jax.devices()``
        (every device of jax's default platform, e.g. all GPUs of a node).  Pick some with
        ``jax.devices("gpu")[:4]``.

    Returns
    -------
    The same tree, its jax arrays placed with
    ``NamedSharding(Mesh(devices, ("probes",)), PartitionSpec())``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from kpflow.backends.jax import replicate
    >>> params = replicate({"w": jnp.ones((2, 2)), "scale": 0.5}, jax.devices()[:1])
    >>> params["w"].sharding.is_fully_replicated, params["scale"]
    (True, 0.5)
    """
    found = _check_devices(devices)
    grid = np.empty(len(found), dtype=object)
    grid[:] = found
    sharding = NamedSharding(Mesh(grid, (PROBE_AXIS,)), PartitionSpec())
    return jax.tree_util.tree_map(
        lambda a: jax.device_put(a, sharding) if isinstance(a, jax.Array) else a, tree
    )


@contextlib.contextmanager
def shard_probes(enabled: bool = True) -> Iterator[None]:
    """Within the context, split probe blocks across devices (the default) or not (``False``).

    ``with shard_probes(False):`` keeps every block replicated, so that each device
    computes every product in full: the baseline of a speedup measurement.  The setting
    is per thread and per asyncio task (a ``contextvars.ContextVar``).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from kpflow.backends.jax import adapter, shard_probes
    >>> with shard_probes(False):
    ...     block = jnp.ones((16, 3))
    ...     adapter.distribute(block) is block
    True
    """
    token = _SHARD_PROBES.set(bool(enabled))
    try:
        yield
    finally:
        _SHARD_PROBES.reset(token)


def sharded_matmat(A: Any, X: Any) -> Any:
    """``A X`` for a block ``X`` of shape ``(k, *A.shape_in)``, its probes split across ``X``'s devices.

    ``A.matmat(X)`` computes a replicated ``X`` in full on every device; this splits the
    probe axis like the solvers do (:meth:`JaxBackend.distribute`) and returns the
    result in ``X``'s layout (replicated again).  On one device it is ``A.matmat(X)``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import kpflow
    >>> from kpflow.backends.jax import sharded_matmat
    >>> A = kpflow.Dense(jnp.asarray([[2.0, 0.0], [1.0, 3.0]]))
    >>> [float(v) for v in sharded_matmat(A, jnp.ones((1, 2)))[0]]
    [2.0, 4.0]
    """
    A._check(X, A.shape_in, "X", "sharded_matmat", 1)
    block = adapter.distribute(X)
    out = A._matmat(block)
    if block is X or not isinstance(out, jax.Array):
        return out
    return jax.device_put(out, X.sharding)


# -- the persistent compilation cache (turned on by the kpflow command, never by an import) --------
#: The environment variable naming the folder of the persistent compilation cache that
#: ``kpflow spectrum --backend jax`` uses; empty or ``off`` turns it off.
CACHE_ENV = "KPFLOW_JAX_CACHE"


def compilation_cache_dir() -> str | None:
    """The folder of kpflow's persistent jax compilation cache, or None when turned off.

    ``$KPFLOW_JAX_CACHE`` when set (empty or ``off``: None), else ``jax`` in the user
    cache folder: ``$XDG_CACHE_HOME/kpflow/jax`` (default ``~/.cache/kpflow/jax``) on
    Linux, ``~/Library/Caches/kpflow/jax`` on macOS, ``%LOCALAPPDATA%\\kpflow\\cache\\jax`` on
    Windows.

    Examples
    --------
    >>> import os
    >>> from kpflow.backends.jax import CACHE_ENV, compilation_cache_dir
    >>> os.environ[CACHE_ENV] = "off"
    >>> compilation_cache_dir() is None
    True
    >>> del os.environ[CACHE_ENV]
    """
    chosen = os.environ.get(CACHE_ENV)
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "0", "false", "no") else chosen
    home = os.path.expanduser("~")
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
        return os.path.join(base, "kpflow", "cache", "jax")
    if sys.platform == "darwin":
        return os.path.join(home, "Library", "Caches", "kpflow", "jax")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return os.path.join(base, "kpflow", "jax")


def enable_compilation_cache(path: str | os.PathLike[str] | None = None) -> str | None:
    """Keep every program jax compiles in a folder, so that the next process loads it instead.

    Sets jax's persistent compilation cache (``jax_compilation_cache_dir``) to ``path``
    (default :func:`compilation_cache_dir`) and caches every program, however quick to
    compile (``jax_persistent_cache_min_compile_time_secs = 0``): a fresh process then reads
    the programs a previous one compiled (keyed by program, shapes, jax version and
    device) instead of compiling them.  ``kpflow spectrum --backend jax`` calls this;
    importing kpflow never does.  A cache folder the user already set in jax's config is
    kept.  Call it before the first compilation of the process: jax opens its cache once.

    Parameters
    ----------
    path : str or path-like, optional
        The cache folder (created when missing).

    Returns
    -------
    str or None
        The folder in use, or None when turned off (``$KPFLOW_JAX_CACHE`` empty or ``off``).

    Examples
    --------
    >>> import tempfile
    >>> import jax
    >>> from kpflow.backends.jax import enable_compilation_cache
    >>> names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
    ...          "jax_persistent_cache_min_entry_size_bytes")
    >>> saved = {name: getattr(jax.config, name) for name in names}
    >>> d = tempfile.mkdtemp()
    >>> enable_compilation_cache(d) == d, jax.config.jax_persistent_cache_min_compile_time_secs
    (True, 0.0)
    >>> for name, value in saved.items():  # back as it was, before anything compiles
    ...     jax.config.update(name, value)
    """
    current = getattr(jax.config, "jax_compilation_cache_dir", None)
    if current:
        return str(current)
    folder = compilation_cache_dir() if path is None else os.fspath(path)
    if folder is None:
        return None
    os.makedirs(folder, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return folder


# -- Equinox and Flax NNX modules: see kpflow.backends._jax_modules ------------------------------
from kpflow.backends._jax_modules import from_module  # noqa: E402  (after the adapter it uses)
