"""Hatchling build hook: compiles the DWCP encoder's native hot path (``encoding/_native.c``).

The extension is built next to its source, with the compiler and flags of the Python that runs
the build (``sysconfig``), for wheels and for editable installs alike (an editable install
imports it from the source tree). When compilation fails the package still works with the
numpy fallback: the hook warns, unless ``NOVACRON_REQUIRE_NATIVE=1``, which makes it an error.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sysconfig
import tempfile
import warnings
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

SOURCE = Path("src/novacron_dwcp/encoding/_native.c")


class NativeBuildError(RuntimeError):
    """The native extension could not be compiled although NOVACRON_REQUIRE_NATIVE=1."""


def _config(name: str) -> list[str]:
    return shlex.split(str(sysconfig.get_config_var(name) or ""))


def compile_extension(root: Path) -> Path:
    """Compile and link the extension in place; return its path. Raises on failure."""
    source = root / SOURCE
    target = source.with_name("_native" + str(sysconfig.get_config_var("EXT_SUFFIX")))
    include = sysconfig.get_paths()["include"]
    compiler = _config("CC") or ["cc"]
    cflags = [*_config("CFLAGS"), *_config("CCSHARED"), f"-I{include}", "-std=c11"]
    link = _config("LDSHARED") or [*compiler, "-shared"]
    with tempfile.TemporaryDirectory() as scratch:
        obj = Path(scratch) / "_native.o"
        for command in (
            [*compiler, *cflags, "-c", str(source), "-o", str(obj)],
            [*link, str(obj), "-o", str(target)],
        ):
            # The command is the running Python's own compiler and flags (sysconfig).
            done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
            if done.returncode != 0:
                msg = (
                    f"compiling the DWCP native encoder failed ({shlex.join(command)}):\n"
                    f"{done.stdout}{done.stderr}"
                )
                raise NativeBuildError(msg)
    return target


class NativeBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    """Builds ``_native`` before the wheel (or editable wheel) is assembled."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Compile the extension; include it in a regular wheel and tag the wheel."""
        if self.target_name != "wheel":
            return  # an sdist ships the C source; its wheel build compiles it
        root = Path(self.root)
        required = os.environ.get("NOVACRON_REQUIRE_NATIVE") == "1"
        try:
            target = compile_extension(root)
        except (NativeBuildError, OSError) as exc:
            if required:
                msg = f"{exc}\n(NOVACRON_REQUIRE_NATIVE=1: the native encoder is required)"
                raise NativeBuildError(msg) from exc
            warnings.warn(
                f"novacron-dwcp: native encoder not built, using the numpy fallback: {exc}",
                stacklevel=1,
            )
            return
        if version != "editable":
            build_data["pure_python"] = False
            build_data["infer_tag"] = True
            build_data["force_include"][str(target)] = str(target.relative_to(root / "src"))
