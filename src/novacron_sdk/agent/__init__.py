"""The host agent: an HTTP control API for a host's VMs and migrations, and a migration endpoint."""
