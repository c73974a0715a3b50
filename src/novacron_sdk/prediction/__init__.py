"""Bandwidth predictors: observe throughput samples, predict the next horizon."""
