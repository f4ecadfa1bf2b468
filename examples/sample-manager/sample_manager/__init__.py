"""A small "manager" control plane, made highly available by hacore.

- :mod:`sample_manager.api`: the REST service (workflows, resources directory);
- :mod:`sample_manager.worker`: the "mgmtworker" that runs workflows step by step;
- :mod:`sample_manager.recover`: settles interrupted workflows by hand;
- :mod:`sample_manager.hacore_plugin`: the hooks hacore calls (after_promote, health check).

All state is in PostgreSQL (:mod:`sample_manager.db`, :mod:`sample_manager.workflows`) and in
the resources directory, the two things hacore replicates.
"""

from __future__ import annotations

__version__ = "0.1.0"
