"""Configuration: ``novacron.yaml`` sections merged with environment variables and overrides.

Names are imported lazily: the plugin manager imports ``config.hookspecs`` at every start, and
``novacron --help`` must not pay for the YAML loader.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from novacron_sdk.config.loader import (
        CONFIG_ENV,
        NovaCronConfig,
        config_schema,
        default_config_paths,
        load_config,
    )

__all__ = ["CONFIG_ENV", "NovaCronConfig", "config_schema", "default_config_paths", "load_config"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("novacron_sdk.config.loader"), name)
    msg = f"module 'novacron_sdk.config' has no attribute {name!r}"
    raise AttributeError(msg)
