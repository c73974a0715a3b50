"""Model files of the learned predictor (package data)."""
