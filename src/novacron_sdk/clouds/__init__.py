"""Public-cloud compute drivers: the contract and its hooks."""
