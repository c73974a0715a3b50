"""libvirt hypervisor driver for NovaCron SDK: the ``libvirt`` driver and QEMU stream migration."""

from novacron_libvirt.__about__ import __version__

__all__ = ["__version__"]
