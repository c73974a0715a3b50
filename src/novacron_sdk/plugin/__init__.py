"""The public plugin API: everything a plugin module imports from the core.

A plugin marks its hook implementations with :data:`hookimpl`::

    from novacron_sdk.plugin import hookimpl

    @hookimpl
    def novacron_register_hypervisors(registry):
        registry.register("mine", "my_package.driver:MyDriver")
"""

from __future__ import annotations

import pluggy

NAME = "novacron_sdk"
"""The pluggy project name, and the entry-point group plugins are found in."""

hookimpl = pluggy.HookimplMarker(NAME)
"""Decorator marking a function as an implementation of a ``novacron_*`` hook."""

__all__ = ["NAME", "hookimpl"]
