"""Developer tasks. `nox -s tests lint typecheck docs` is the full check that CI runs.

Sessions run in the current environment (venv_backend "none"): create one virtualenv with
`pip install -e ".[dev]"` (or let `.ci/run` do it) and run nox inside it. That keeps CI to one
install instead of one per session.
"""

from __future__ import annotations

import glob
import os

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.default_venv_backend = "none"


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite: in-memory, SoftHSM2 (PKCS#11), emulator (Azure SDK over HTTPS), envelope."""
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def tokens(session: nox.Session) -> None:
    """The PKCS#11 tests on SoftHSM2, NSS softokn (needs libnss3-tools), opencryptoki (needs
    opencryptoki and root) and tpm2-pkcs11 on swtpm (needs libtpm2-pkcs11-1 libtpm2-pkcs11-tools
    swtpm tpm2-tools tpm2-abrmd libtss2-tcti-tabrmd0 dbus), or on the kinds in $KEYBRIDGE_TEST_TOKENS;
    a kind whose packages are missing is skipped, saying which."""
    # One process per kind: two modules in one process can clash (docs/pkcs11.md, opencryptoki and
    # tpm2-pkcs11 export the same internal symbol).
    for kind in os.environ.get("KEYBRIDGE_TEST_TOKENS", "softhsm,nss,opencryptoki,tpm2").split(","):
        session.env["KEYBRIDGE_TEST_TOKENS"] = kind
        session.run("python", "-m", "pytest", "-rs", *session.posargs, *sorted(glob.glob("tests/test_pkcs11_*.py")))


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package."""
    session.run("mypy", "--strict", "src/keybridge")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site; warnings are errors."""
    session.run("mkdocs", "build", "--strict", "--site-dir", "build/site")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks with ratios against the peers they name. Pass --quick for a short run."""
    quick = ["--quick"] if "--quick" in session.posargs else []
    session.run("python", "benchmarks/bench_envelope.py", *quick)
    session.run("python", "benchmarks/bench_pkcs11.py", *quick)
    session.run("python", "benchmarks/bench_ekm.py", *quick)
    session.run("python", "benchmarks/bench_parquet.py", *quick)
    session.run("python", "benchmarks/bench_parquet_dask.py", *quick)
