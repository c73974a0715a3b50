"""Agent settings for a lab: one ``novacron agent`` per private libvirt daemon, like two hosts.

Each agent manages its daemon with the ``libvirt`` driver; the migration settings say where
its QEMU and the agent find the migration sockets, and (destination) how the serial console
path of an incoming guest moves to this daemon's directory.
"""

from __future__ import annotations

import json

from novacron_libvirt.testing.lab import Lab


def agent_settings(lab: Lab, role: str) -> list[str]:
    """``--set`` items for the agent of ``role`` ("source" or "destination") of ``lab``."""
    daemon = lab.source if role == "source" else lab.destination
    other = lab.destination if role == "source" else lab.source
    local = lab.root / ("src-mig" if role == "source" else "dst-mig")
    libvirt = {
        "uri": daemon.uri,
        "shutdown_timeout_s": 2,  # busybox ignores ACPI
        "migration_dir": str(lab.migration_dir),
        "migration_local_dir": str(local),
        "migration_path_map": {str(other.shared_dir("serial")): str(daemon.shared_dir("serial"))},
    }
    return [
        "agent.driver=libvirt",
        f"drivers.settings={json.dumps({'libvirt': libvirt})}",
    ]
