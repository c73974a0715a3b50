"""The live-migration engine: plan, pre-copy rounds, switch-over, verification, report."""
