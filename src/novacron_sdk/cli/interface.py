"""The contract of a CLI subcommand contributed by a plugin."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class CliCommand:
    """A ``novacron`` subcommand.

    ``configure`` adds arguments (and nested subcommands) to the command's parser; ``run`` gets
    the parsed namespace and returns the exit code.
    """

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
