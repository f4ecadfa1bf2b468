"""The managed-store contract: a store run by hacore itself (bootstrap, join, the loss of a
member, removal)."""

from __future__ import annotations

import json

import pytest

from hacore.backends.consensus import ManagedStore
from hacore.errors import ManagedStoreError
from hacore.testing.contract_support import answered, eventually, merge_client_settings
from hacore.testing.pytest_plugin import ConsensusFactory, ManagedStoreFactory


class ManagedStoreContract:
    """A store run by hacore itself: bootstrap, join, loss of a member, removal."""

    @pytest.mark.timeout(60)
    def test_bootstrap_refuses_a_non_empty_data_dir(
        self, managed_store_factory: ManagedStoreFactory
    ) -> None:
        store = managed_store_factory("m1")
        store.data_dir.mkdir(parents=True, exist_ok=True)
        (store.data_dir / "leftover").write_text("someone's data")
        with pytest.raises(ManagedStoreError):
            store.bootstrap()
        assert (store.data_dir / "leftover").read_text() == "someone's data"
        assert not store.is_running()

    @pytest.mark.timeout(300, method="signal")
    def test_three_members_survive_the_loss_of_one(
        self,
        managed_store_factory: ManagedStoreFactory,
        consensus_factory: ConsensusFactory,
    ) -> None:
        stores = _build_store(managed_store_factory, 3)
        members = stores[0].members()
        assert sorted(m.name for m in members) == ["m1", "m2", "m3"]
        assert all(m.voting for m in members), f"not every member votes: {members}"
        stores[0].stop()
        assert not stores[0].is_running()
        survivor = consensus_factory(
            "survivor", settings=merge_client_settings(stores[1:]), retry_timeout=2.0
        )
        lease = eventually(survivor.campaign, 60, "a campaign on the two remaining members")
        assert survivor.renew(lease) is True
        assert answered(lambda: survivor.put("managed/k", b"v"), 30, "a write")
        stores[0].start()
        assert stores[0].is_running()
        rejoined = consensus_factory(
            "rejoined", settings=stores[0].client_settings(), retry_timeout=2.0
        )

        def caught_up() -> bool:
            kv = rejoined.get("managed/k")
            return kv is not None and kv.value == b"v"

        eventually(caught_up, 60, "the restarted member serves the write made while it was down")

    @pytest.mark.timeout(300, method="signal")
    def test_remove_member_shrinks_the_store(
        self,
        managed_store_factory: ManagedStoreFactory,
        consensus_factory: ConsensusFactory,
    ) -> None:
        stores = _build_store(managed_store_factory, 3)
        stores[0].remove_member("m3")
        stores[2].stop()
        eventually(
            lambda: sorted(m.name for m in stores[0].members()) == ["m1", "m2"],
            60,
            "m3 is gone from the members",
        )
        stores[1].remove_member("m3")
        assert sorted(m.name for m in stores[1].members()) == ["m1", "m2"]
        node = consensus_factory(
            "after", settings=merge_client_settings(stores[:2]), retry_timeout=2.0
        )
        assert eventually(node.campaign, 60, "a campaign on the shrunk store") is not None
        assert node.put("managed/after", b"1")


def _build_store(factory: ManagedStoreFactory, size: int) -> list[ManagedStore]:
    """bootstrap on the first, then identity / add_member / join for each other."""
    stores = [factory(f"m{i + 1}") for i in range(size)]
    first = stores[0].bootstrap()
    assert first.name == "m1"
    for store in stores[1:]:
        spec = stores[0].add_member(store.identity())
        joined = store.join(json.loads(json.dumps(spec)))
        assert joined.name == store.name
    return stores
