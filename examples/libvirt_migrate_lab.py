"""Live-migrate a real QEMU guest between two libvirt daemons on this machine, over DWCP.

The lab of the plugin's tests (``novacron_libvirt.testing``): two private libvirt daemons
(each in its own mount namespace, like two hosts), a tiny Debian-kernel + busybox guest booted
under TCG, and ``migrate_stream`` carrying QEMU's migration stream over DWCP (compressed, the
guest's direct-boot kernel and initrd pages sent as references). Needs root and the system
packages of docs/libvirt.md::

    python examples/libvirt_migrate_lab.py                 # DWCP (when installed), else TCP
    python examples/libvirt_migrate_lab.py --transport tcp --no-page-references
"""

from __future__ import annotations

import argparse
import asyncio

from novacron_libvirt.driver import LibvirtDriver
from novacron_libvirt.migration import migrate_stream, rewrite_paths
from novacron_libvirt.testing.console import SerialConsole
from novacron_libvirt.testing.lab import Lab, boot_guest, qemu_unavailable_reason
from novacron_sdk.migration.models import MigrationSettings
from novacron_sdk.plugin.manager import build_plugin_manager


async def migrate(lab: Lab, transport_name: str, page_references: bool) -> None:
    """Boot the guest at the source, migrate it live, show that it runs at the destination."""
    guest = await boot_guest(lab, "example")
    source = LibvirtDriver({"uri": lab.source.uri, "events": False})
    destination = LibvirtDriver({"uri": lab.destination.uri, "events": False})
    try:
        qemu_socket, source_socket, destination_socket = lab.migration_sockets("example")
        moved_console = lab.serial_socket(lab.destination, "example")
        xml = await source.ex_domain_xml(guest.vm.id, flags=8)  # VIR_DOMAIN_XML_MIGRATABLE
        result = await migrate_stream(
            source,
            destination,
            guest.vm.id,
            transport=build_plugin_manager().transports.get(transport_name)(),
            qemu_socket=qemu_socket,
            source_socket=source_socket,
            destination_socket=destination_socket,
            settings=MigrationSettings(downtime_limit_ms=300),
            destination_xml=rewrite_paths(xml, {str(guest.serial_socket): str(moved_console)}),
            page_references=page_references,
        )
        print(
            f"{result.vm.name} now {result.vm.state.value} on {result.vm.host} via "
            f"{result.transport}: {result.total_s:.2f} s, downtime {result.downtime_ms} ms, "
            f"{result.bytes_to_destination / 2**20:.1f} MiB of QEMU stream carried as "
            f"{result.frame_bytes_to_destination / 2**20:.1f} MiB ({result.codec}, "
            f"{result.referenced_pages} pages as references)"
        )
        console = await SerialConsole.connect(moved_console)
        try:
            print(f"heartbeat at the destination: {await console.next_heartbeat(0)}")
        finally:
            await console.close()
    finally:
        await destination.destroy(guest.vm.name)
        await source.close()
        await destination.close()


def main() -> int:
    """Parse the options, start the lab, migrate, stop the lab."""
    plugins = build_plugin_manager()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    default = "dwcp" if "dwcp" in plugins.transports else "tcp"
    parser.add_argument("--transport", default=default, help=f"default: {default}")
    parser.add_argument("--no-page-references", action="store_true")
    args = parser.parse_args()
    reason = qemu_unavailable_reason()
    if reason:
        print(f"cannot run the lab here: {reason}")
        return 1
    lab = Lab.start()
    try:
        asyncio.run(migrate(lab, args.transport, not args.no_page_references))
    finally:
        lab.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
