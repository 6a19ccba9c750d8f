"""Developer sessions: tests per backend, lint, types, docs.

torch is always installed with the CPU pin below: an unpinned torch pulls a
multi-GB CUDA build.  The pin lives here and in .ci/run, never in the package
metadata.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "types"]
nox.options.default_venv_backend = "virtualenv"

TORCH_PIN = "torch==2.13.0"
BACKENDS = ["numpy", "array_api_strict", "torch", "jax"]


def _pytest_on(session: nox.Session, backend: str, profile: str, *args: str) -> None:
    """Install for ``backend`` and run pytest there (array_api_strict always rides along)."""
    session.install("-e", ".[test]")
    if backend == "torch":
        session.install(TORCH_PIN)
    elif backend == "jax":
        session.install("-e", ".[test,jax]")
    selected = backend if backend == "array_api_strict" else f"{backend},array_api_strict"
    env = {"KPFLOW_TEST_BACKENDS": selected, "KPFLOW_HYPOTHESIS_PROFILE": profile}
    session.run("python", "-m", "pytest", *args, *session.posargs, env=env)


@nox.session
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """Run the test suite on one backend, with the derandomized ``ci`` hypothesis profile."""
    _pytest_on(session, backend, "ci")


@nox.session
@nox.parametrize("backend", BACKENDS)
def thorough(session: nox.Session, backend: str) -> None:
    """The test suite with the ``thorough`` hypothesis profile: fresh random draws, 200 per test.

    Not run by default (minutes to hours); e.g. ``nox -s "thorough(backend='torch')" -- -k ntk``.
    """
    _pytest_on(session, backend, "thorough")


@nox.session
@nox.parametrize("backend", BACKENDS)
def properties(session: nox.Session, backend: str) -> None:
    """The heavy property tests (marker ``properties``) on the ``properties`` hypothesis profile.

    The profiles (tests/conftest.py):

    - ``ci`` (``nox -s tests``, ``.ci/run``): fixed draws; a property test runs its own
      ``examples(n)`` count (25 when it names none), but a test marked ``properties`` runs only
      its first 2 (the simplest) draws on jax, whose per-shape compilation makes each draw cost
      seconds, and on jax one variant per model class (``SLOW_BACKEND_MODELS``).  Every model
      and every size limit is still reached on every backend: models and limits are
      parametrized, not drawn.
    - ``properties`` (this session): fresh random draws, ``max(n, 50)`` per test on every
      backend, jax included; only the tests marked ``properties``.  Minutes per backend (jax:
      about an hour).  A failure prints the blob that replays it with ``@reproduce_failure``.
    - ``thorough`` (``nox -s thorough``): the whole suite, ``max(n, 200)`` fresh draws.

    e.g. ``nox -s "properties(backend='jax')" -- -k transformer``.
    """
    _pytest_on(session, backend, "properties", "-m", "properties")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check over the whole tree."""
    session.install("ruff")
    session.run("ruff", "check", "kpflow", "backends", "tests", "benchmarks", "noxfile.py")


@nox.session
def types(session: nox.Session) -> None:
    """mypy on the core and the adapters."""
    session.install("-e", ".[jax]", "mypy", TORCH_PIN)
    session.run("mypy", "kpflow", "backends")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx site with warnings as errors, then check it and run every docs example.

    The tutorials are executed while building (myst-nb), so the session installs what they
    need (torch with the CPU pin, jax, matplotlib).  The site lands in ``docs/_build/html``;
    ``tests/package/test_docs_site.py`` then checks the built reference (every public name in
    ``objects.inv``) and every internal link and anchor of the built pages, and the docs tests
    run each page's examples.  ``nox -s docs -- --no-examples`` builds and checks the site only.
    """
    session.install("-e", ".[docs,plot,test,jax]", TORCH_PIN)
    html = "docs/_build/html"
    env = {"JAX_PLATFORMS": "cpu", "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    session.run("python", "-m", "sphinx", "-W", "--keep-going", "-b", "html", "docs", html, env=env)
    tests = ["tests/package/test_docs_site.py"]
    if "--no-examples" not in session.posargs:
        tests += [
            "tests/package/test_docs_pages.py",
            "tests/package/test_docs_standalone.py",
            "tests/package/test_readme.py",
        ]
    session.run(
        "python", "-m", "pytest", *tests, "-p", "no:cacheprovider", env={**env, "KPFLOW_DOCS_HTML": html}
    )
