"""Forming and changing the cluster: start, join, remove, and the CLI profile that finds it."""
