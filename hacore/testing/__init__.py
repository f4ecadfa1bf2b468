"""Test support shipped with hacore: contract suites, harnesses, in-memory backends."""
