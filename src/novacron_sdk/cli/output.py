"""Terminal output for the CLI: JSON, tables and messages, with rich imported only when used.

``--help`` and ``--json`` never import rich; a table does, on first use.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

_PLAIN_WIDTH = 160
"""Width used when stdout is not a terminal, so that piped tables are not wrapped at 80."""


def print_json(data: Any, *, file: TextIO | None = None) -> None:
    """Write ``data`` as indented JSON (datetimes and paths as strings)."""
    out = file if file is not None else sys.stdout
    out.write(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")


def error(message: str) -> None:
    """Print ``error: <message>`` to stderr."""
    sys.stderr.write(f"error: {message}\n")


def warn(message: str) -> None:
    """Print ``warning: <message>`` to stderr."""
    sys.stderr.write(f"warning: {message}\n")


def echo(message: str = "") -> None:
    """Print a plain line to stdout."""
    sys.stdout.write(message + "\n")


def _console(file: TextIO) -> Any:
    from rich.console import Console

    width = None
    if not file.isatty():
        width = int(os.environ.get("COLUMNS", _PLAIN_WIDTH))
    return Console(file=file, width=width, soft_wrap=False, highlight=False)


def print_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    title: str | None = None,
    highlight: Iterable[int] = (),
    file: TextIO | None = None,
) -> None:
    """Print a table; rows whose index is in ``highlight`` are shown in bold red.

    Cells are converted with ``str``; ``None`` becomes ``-``.
    """
    from rich.table import Table

    out = file if file is not None else sys.stdout
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    marked = set(highlight)
    for index, row in enumerate(rows):
        cells = ["-" if cell is None else str(cell) for cell in row]
        table.add_row(*cells, style="bold red" if index in marked else None)
    _console(out).print(table)


def print_mapping(data: dict[str, Any], *, title: str | None = None) -> None:
    """Print a two-column key/value table."""
    print_table(("field", "value"), [(k, _cell(v)) for k, v in data.items()], title=title)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str) if value else "-"
    return str(value)
