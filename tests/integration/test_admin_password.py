"""``hacore cluster admin-password`` on a real cluster (issue 10): the old password opens
nothing afterwards, on the active and on a member that was there during the change; the new
one unseals the CA key for a join; the CLI profile follows.

Real agents on loopback (``cluster_fixtures``, managed etcd, TLS on): n1 starts, n2 joins,
the password changes, n3 joins with the new one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator

import httpx
import pytest
from cluster_fixtures import WAIT, CliCluster, Node, make_root

from hacore.testing.procs import wait_for

pytestmark = pytest.mark.slow

NEW = "a-new-admin-password-" + os.urandom(4).hex()


@pytest.fixture(scope="module")
def cluster() -> Iterator[CliCluster]:
    formed = CliCluster(make_root(), "etcd")
    try:
        first = formed.add("n1")
        out = formed.cli("cluster", "start", "-c", str(first.config_path), "--timeout", str(WAIT))
        formed.ca_fingerprint = out.output.split("cluster CA fingerprint (SHA-256): ")[1].split()[0]
        second = formed.add("n2")
        formed.cli(
            *second.join_arguments(first), "--ca-fingerprint", formed.ca_fingerprint,
            "--timeout", str(WAIT),
        )  # fmt: skip
        yield formed
    finally:
        formed.cleanup()
        if not os.environ.get("HACORE_KEEP_TEST_DIRS"):
            shutil.rmtree(formed.root, ignore_errors=True)


def _status(node: Node, auth: tuple[str, str], path: str = "/cluster") -> int:
    with httpx.Client(verify=node.ca_context(), timeout=30.0, trust_env=False) as client:
        return client.get(node.url + path, auth=auth).status_code


def _change(cluster: CliCluster, current: str, new: str, code: int) -> str:
    env = {"HACORE_PASSWORD": current, "HACORE_NEW_PASSWORD": new}
    return cluster.cli("cluster", "admin-password", code=code, env=env).output


def test_refusals_change_nothing(cluster: CliCluster) -> None:
    user, old = cluster.credentials()
    wrong = _change(cluster, "not-the-password", NEW, 4)
    assert "credentials" in wrong, wrong
    assert "too short" in _change(cluster, old, "short", 2)
    assert "is the current one" in _change(cluster, old, old, 2)
    # no terminal and no environment: nothing to ask with
    missing = cluster.cli("cluster", "admin-password", code=2, env={"HACORE_PASSWORD": old})
    assert "HACORE_NEW_PASSWORD" in missing.output
    assert _status(cluster.nodes["n1"], (user, old)) == 200
    assert cluster.credentials() == (user, old)


def test_the_old_password_opens_nothing_and_the_new_one_joins(cluster: CliCluster) -> None:
    user, old = cluster.credentials()
    first, second = cluster.nodes["n1"], cluster.nodes["n2"]
    out = cluster.cli(
        "cluster", "admin-password", "--json",
        env={"HACORE_PASSWORD": old, "HACORE_NEW_PASSWORD": NEW},
    )  # fmt: skip
    answer = json.loads(out.stdout)
    assert answer["changed"] is True, answer
    assert answer["ca_key"] == "resealed under the new password", answer
    assert answer["failsafe_key"].startswith("rotated"), answer
    assert "new password" in answer["profile"], answer
    # the profile follows, and a command run with it works
    assert cluster.credentials() == (user, NEW)
    cluster.cli("cluster", "profile", "show")
    cluster.cli("cluster", "status")
    # the active at once; the member that was there during the change within seconds
    assert _status(first, (user, old)) == 401
    assert _status(first, (user, NEW)) == 200
    wait_for(lambda: _status(second, (user, old)) == 401, 30, what="n2 refusing the old password")
    assert _status(second, (user, NEW)) == 200
    # a standby does not change it
    with httpx.Client(verify=second.ca_context(), timeout=30.0, trust_env=False) as client:
        refused = client.post(
            second.url + "/cluster/admin-password",
            json={"new_password": "yet-another-long-password"},
            auth=(user, NEW),
        )
    assert refused.status_code != 200 and "active" in refused.text, refused.text
    # the new password unseals the CA key: the active signs a joiner's certificate with it
    third = cluster.add("n3")
    cluster.cli(
        *third.join_arguments(first), "--username", user, "--ca-fingerprint",
        cluster.ca_fingerprint, "--timeout", str(WAIT), env={"HACORE_PASSWORD": NEW},
    )  # fmt: skip
    assert _status(third, (user, old)) == 401
    assert _status(third, (user, NEW)) == 200
