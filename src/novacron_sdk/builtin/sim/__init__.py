"""The embedded ``sim`` hypervisor: simulated VMs with real memory bytes, for demos and tests."""
