"""The hookspec marker. Private: only the core's ``*/hookspecs.py`` modules define hooks."""

from __future__ import annotations

import pluggy

from novacron_sdk.plugin import NAME

hookspec = pluggy.HookspecMarker(NAME)
