"""Multi-region sync: CRDT replicas (HLC last-writer-wins map, observed-remove set) kept
in step by anti-entropy over HTTP."""
