"""Lifecycle hook: plugins contribute sections to ``novacron.yaml``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novacron_sdk.plugin._spec import hookspec

if TYPE_CHECKING:
    from pydantic import BaseModel

    from novacron_sdk.plugin.registry import Registry


@hookspec
def novacron_add_config_sections(registry: Registry[type[BaseModel]]) -> None:
    """Contribute config sections: ``registry.register("section", SettingsModel)``.

    Called once per plugin when configuration is first loaded. Each section is a pydantic
    model with defaults for every field; it appears under its name in ``novacron.yaml``, in
    ``novacron config schema`` and accepts ``NOVACRON_<SECTION>__<KEY>`` overrides.
    """
