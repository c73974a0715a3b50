"""Configuration: ``novacron.yaml`` sections merged with environment variables and overrides."""

from __future__ import annotations

from novacron_sdk.config.loader import (
    CONFIG_ENV,
    NovaCronConfig,
    config_schema,
    default_config_paths,
    load_config,
)

__all__ = ["CONFIG_ENV", "NovaCronConfig", "config_schema", "default_config_paths", "load_config"]
