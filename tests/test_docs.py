"""Meta-tests that keep the docs and the contract honest.

Every hookspec is documented in docs/hooks.md with its exact signature and has a test; every
page in the mkdocs nav exists; the site builds with ``mkdocs build --strict``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from novacron_sdk.plugin.manager import HOOKSPEC_MODULES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HOOKS_PAGE = DOCS / "hooks.md"


def hookspecs() -> Iterator[tuple[str, Callable[..., Any]]]:
    """(module, function) for every hookspec of every domain."""
    for module_name in HOOKSPEC_MODULES:
        module = importlib.import_module(module_name)
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if name.startswith("novacron_") and hasattr(function, "novacron_sdk_spec"):
                yield module_name, function


def signature_line(function: Callable[..., Any]) -> str:
    """``def name(arg: Annotation, ...) -> Return`` with annotations as written in the source."""
    signature = inspect.signature(function)
    params = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
    return f"def {function.__name__}({params}) -> {signature.return_annotation}"


HOOKS = sorted(hookspecs(), key=lambda item: item[1].__name__)
HOOK_IDS = [function.__name__ for _, function in HOOKS]


def test_every_hookspec_module_defines_hooks():
    modules = {module for module, _ in HOOKS}
    assert modules == set(HOOKSPEC_MODULES)


@pytest.mark.parametrize(("module", "function"), HOOKS, ids=HOOK_IDS)
def test_hook_is_documented_with_exact_signature(module, function):
    page = HOOKS_PAGE.read_text(encoding="utf-8")
    assert f"### `{function.__name__}`" in page, f"{function.__name__} has no section in hooks.md"
    section = page.split(f"### `{function.__name__}`", 1)[1].split("\n### ", 1)[0]
    assert f"```python\n{signature_line(function)}\n```" in section, (
        f"docs/hooks.md shows an outdated signature for {function.__name__}; expected\n"
        f"{signature_line(function)}"
    )
    summary = inspect.cleandoc(function.__doc__ or "").split("\n", 1)[0]
    assert summary, f"{module}.{function.__name__} has no docstring"
    assert summary in section
    firstresult = bool(function.novacron_sdk_spec.get("firstresult"))
    assert ("firstresult" in section) == firstresult


def test_hooks_page_documents_no_stale_hook():
    documented = set(re.findall(r"^### `(novacron_\w+)`", HOOKS_PAGE.read_text(), re.MULTILINE))
    assert documented == set(HOOK_IDS)


def _test_files() -> list[Path]:
    files = [p for p in (ROOT / "tests").rglob("test_*.py") if p.name != "test_docs.py"]
    files += list((ROOT / "plugins").glob("**/tests/**/test_*.py"))
    return [p for p in files if "fixtures" not in p.parts]


@pytest.mark.parametrize("hook", HOOK_IDS)
def test_hook_has_a_test(hook):
    users = [p for p in _test_files() if hook in p.read_text(encoding="utf-8")]
    assert users, f"no test file under tests/ or plugins/**/tests/ mentions {hook}"


def _nav_pages(nav: list[Any]) -> Iterator[str]:
    for item in nav:
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            for value in item.values():
                if isinstance(value, str):
                    yield value
                else:
                    yield from _nav_pages(value)


def _mkdocs_config() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def test_every_nav_page_exists():
    pages = list(_nav_pages(_mkdocs_config()["nav"]))
    assert "hooks.md" in pages
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert not missing, f"mkdocs.yml nav names pages that do not exist: {missing}"


def test_every_page_is_in_the_nav():
    pages = set(_nav_pages(_mkdocs_config()["nav"]))
    orphans = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert [p for p in orphans if p not in pages] == []


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs-material is not installed (pip install 'novacron-sdk[docs]')")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--site-dir",
            str(tmp_path / "site"),
            "--config-file",
            str(ROOT / "mkdocs.yml"),
        ],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "site" / "hooks" / "index.html").is_file()


def test_quickstart_example_runs(python_subprocess):
    result = python_subprocess(str(ROOT / "examples" / "quickstart.py"))
    assert result.exit_code == 0, result.stderr
    assert "created quickstart-1" in result.stdout
    assert "VMs left: 0" in result.stdout


# -- regenerating the reference ------------------------------------------------------------
DOMAIN_TITLES = {
    "hypervisors": "Hypervisors",
    "clouds": "Clouds",
    "transport": "Transport",
    "encoding": "Encoding",
    "prediction": "Prediction",
    "placement": "Placement",
    "consensus": "Consensus and state",
    "security": "Security",
    "migration": "Migration engine",
    "config": "Configuration",
    "init": "Initialization",
    "cli": "CLI",
}


def render_hook_sections() -> str:
    """The per-hook part of docs/hooks.md, from the hookspec modules (run this file to print it).

    ``python tests/test_docs.py > /tmp/hooks.md`` then paste it under the page's introduction.
    """
    from novacron_sdk.plugin.manager import REGISTRY_HOOKS

    out = []
    for module_name in HOOKSPEC_MODULES:
        out.append(f"## {DOMAIN_TITLES[module_name.split('.')[1]]}\n\n`{module_name}`\n")
        for module, function in sorted(hookspecs(), key=lambda item: item[1].__name__):
            if module != module_name:
                continue
            name = function.__name__
            if function.novacron_sdk_spec.get("firstresult"):
                kind = (
                    "**decision** (firstresult: the first non-None result wins; call it with "
                    "`plugins.call_decision(...)`)"
                )
            elif name in REGISTRY_HOOKS.values():
                kind = "**registration** (fills a typed registry)"
            else:
                kind = "**broadcast event** (every listener is called; failures are logged)"
            doc = inspect.cleandoc(function.__doc__ or "")
            out.append(
                f"### `{name}`\n\n```python\n{signature_line(function)}\n```\n\n"
                f"Kind: {kind}.\n\n{doc}\n"
            )
    return "\n".join(out)


def test_hook_sections_match_the_source():
    page = HOOKS_PAGE.read_text(encoding="utf-8")
    assert render_hook_sections().strip() in page, (
        "docs/hooks.md is out of date: regenerate its hook sections with "
        "`python tests/test_docs.py` (see render_hook_sections)"
    )


if __name__ == "__main__":
    print(render_hook_sections())
