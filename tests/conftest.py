"""Repository-wide test setup.

The contract fixtures and the ``--hacore-backend`` option come from hacore's own pytest
plugin (:mod:`hacore.testing.pytest_plugin`, loaded through its ``pytest11`` entry point),
exactly as a third-party backend's test suite gets them.
"""
