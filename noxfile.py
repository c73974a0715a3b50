"""Developer sessions: ``nox -s tests``, ``lint``, ``typecheck``, ``bench``, ``demo``, ``docs``.

Sessions run in the current environment (``scripts/setup.sh`` installs the core and every
plugin package in editable mode), so they are quick and see exactly what CI sees. Plugin
packages are found by glob, never listed by hand.
"""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent
nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "typecheck", "tests"]


def plugin_dirs() -> list[Path]:
    """Every plugin package (a folder with a pyproject.toml), the template excluded."""
    found = sorted(ROOT.glob("plugins/*/pyproject.toml")) + sorted(
        ROOT.glob("plugins/*/*/pyproject.toml")
    )
    return [p.parent for p in found if "_template" not in p.parts]


@nox.session
def setup(session: nox.Session) -> None:
    """Install the Debian packages (as root) and every package in editable mode."""
    session.run("bash", "scripts/setup.sh", external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """pytest for the core and every plugin package (extra args go to pytest)."""
    dirs = ["tests"] + [str(d / "tests") for d in plugin_dirs() if (d / "tests").is_dir()]
    session.run("python", "-m", "pytest", *dirs, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole tree."""
    session.run("python", "-m", "ruff", "check", ".")
    session.run("python", "-m", "ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy strict on the core and every plugin's sources."""
    srcs = ["src/novacron_sdk"] + [
        str(pkg) for d in plugin_dirs() for pkg in sorted((d / "src").glob("*")) if pkg.is_dir()
    ]
    session.run("python", "-m", "mypy", *srcs)


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmarks/<name>.py (--quick for short runs); JSON goes to benchmarks/results."""
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    for script in sorted((ROOT / "benchmarks").glob("[!_]*.py")):
        session.run(
            "python", str(script), "--json", str(out / f"{script.stem}.json"), *session.posargs
        )


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: two local agents and a live migration of a busy sim VM."""
    session.run("python", "-m", "novacron_sdk", "demo", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site (mkdocs-material) into site/, strictly."""
    session.run("mkdocs", "build", "--strict", external=True)
