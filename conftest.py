"""Root pytest configuration: skip doctests of adapters whose framework is not installed."""

from importlib.util import find_spec

collect_ignore = [f"backends/{name}.py" for name in ("torch", "jax", "cupy") if find_spec(name) is None]
