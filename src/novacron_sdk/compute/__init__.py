"""The compute-driver contract shared by hypervisor and cloud drivers."""
