"""The plugin module named by the ``dwcp`` entry point: each subpackage's hook implementations.

Importing this module must stay cheap: registrations are lazy ``"module:Class"`` references,
so zstandard, lz4 and the optional extras load only when a migration uses them.
"""

from novacron_dwcp.consensus.hooks import novacron_register_state_stores
from novacron_dwcp.encoding.hooks import novacron_choose_codec, novacron_register_codecs
from novacron_dwcp.placement.hooks import novacron_register_placement_policies
from novacron_dwcp.prediction.hooks import (
    novacron_add_cli_commands,
    novacron_register_predictors,
)
from novacron_dwcp.sync.hooks import (
    novacron_add_config_sections,
    novacron_register_init_components,
)
from novacron_dwcp.transport.hooks import (
    novacron_choose_stream_count,
    novacron_register_transports,
)

__all__ = [
    "novacron_add_cli_commands",
    "novacron_add_config_sections",
    "novacron_choose_codec",
    "novacron_choose_stream_count",
    "novacron_register_codecs",
    "novacron_register_init_components",
    "novacron_register_placement_policies",
    "novacron_register_predictors",
    "novacron_register_state_stores",
    "novacron_register_transports",
]
