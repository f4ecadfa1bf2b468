"""The shipped contract suites, run against every backend selected with ``--hacore-backend``."""

from __future__ import annotations

from hacore.testing.contract import ConsensusContract, ManagedStoreContract


class TestConsensus(ConsensusContract):
    pass


class TestManagedStore(ManagedStoreContract):
    pass
