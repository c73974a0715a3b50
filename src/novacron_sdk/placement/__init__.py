"""Placement: choose hosts for VMs (single requests and batches)."""
