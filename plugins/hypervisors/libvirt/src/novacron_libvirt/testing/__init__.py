"""Test helpers for the libvirt plugin: a tiny Linux guest and private libvirt daemons."""
