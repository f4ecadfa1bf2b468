"""The consensus contract: what every backend must do, as test classes to subclass.

A backend passes when these classes pass against a real store. They take their fixtures from
:mod:`hacore.testing.pytest_plugin` only (``consensus_harness``, ``consensus_factory``,
``managed_store_factory``), so a backend author runs them with::

    from hacore.testing.contract import ConsensusContract, ManagedStoreContract

    class TestMine(ConsensusContract): pass
    class TestMineManaged(ManagedStoreContract): pass

(see :mod:`hacore.testing.pytest_plugin` for selecting or providing the harness).

Timeouts are generous wherever the number is not the contract; where it is (lease expiry,
watch latency, resign handover, bounded errors) the assertion message gives the measurement.
Tests that injure the store (kill a server, freeze all) restore it in ``finally`` and carry a
hard pytest-timeout, so a hanging backend fails the test instead of the session.
"""

from hacore.testing.consensus_data import (
    MemberRecordsContract,
    VersionedKeysContract,
    WatchContract,
)
from hacore.testing.consensus_faults import StoreFaultsContract
from hacore.testing.consensus_leadership import LeadershipContract
from hacore.testing.managed_store_contract import ManagedStoreContract


class ConsensusContract(
    LeadershipContract,
    MemberRecordsContract,
    VersionedKeysContract,
    WatchContract,
    StoreFaultsContract,
):
    """Leadership, members, versioned keys and watches on one running store."""


__all__ = ["ConsensusContract", "ManagedStoreContract"]
