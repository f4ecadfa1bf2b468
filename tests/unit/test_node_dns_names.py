"""``node.dns_names``: DNS names for the node certificate beside ``node.host``, so HAProxy's
``verifyhost`` (which matches DNS names only) can check a member reached at an IP address."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from hacore import pki
from hacore.agent.tls_paths import node_dir
from hacore.cluster.tls import create_cluster_ca, node_hosts
from hacore.config.node import load_config
from hacore.config.write_back import to_mapping
from hacore.errors import ConfigError


def raw(tmp_path: Path, **node: Any) -> dict[str, Any]:
    return {
        "node": {"name": "n1", "host": "10.0.0.11", "data_dir": str(tmp_path), **node},
        "consensus": {"backend": "memory"},
    }


def error(source: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(source)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_names_are_read_and_written_back(tmp_path: Path) -> None:
    names = ["db1.example.com", "db1", "db1.example.com."]
    config = load_config(raw(tmp_path, dns_names=names))
    assert config.node.dns_names == tuple(names)
    assert load_config(to_mapping(config)).node.dns_names == tuple(names)
    assert load_config(raw(tmp_path)).node.dns_names == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["10.0.0.12"], 'node.dns_names: "10.0.0.12" is not a DNS name (an address goes in'),
        (["fd00::1"], 'node.dns_names: "fd00::1" is not a DNS name'),
        (["-bad.example.com"], 'node.dns_names: "-bad.example.com" is not a DNS name'),
        (["a..b"], 'node.dns_names: "a..b" is not a DNS name'),
        (["*.example.com"], 'node.dns_names: "*.example.com" is not a DNS name'),
        (["x" * 64 + ".com"], "is not a DNS name"),
        ("db1.example.com", "node.dns_names must be a list of DNS names"),
        (["db1", "db1"], 'node.dns_names lists "db1" twice'),
        ([""], "node.dns_names[0] must be one of DNS names"),
    ],
)
def test_bad_names_are_refused_in_one_line(tmp_path: Path, value: Any, expected: str) -> None:
    assert expected in error(raw(tmp_path, dns_names=value))


def test_the_node_certificate_carries_the_names(tmp_path: Path) -> None:
    config = load_config(raw(tmp_path, dns_names=["db1.example.com", "DB1.Internal."]))
    hosts = node_hosts(config)
    assert hosts == ("10.0.0.11", "db1.example.com", "DB1.Internal.", "127.0.0.1", "localhost")
    create_cluster_ca(config, hosts)
    cert = pki.load_node_certificate(node_dir(config.node.data_dir)).certificate
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.DNSName) == ["db1.example.com", "db1.internal", "localhost"]
    assert [str(a) for a in alt.get_values_for_type(x509.IPAddress)] == ["10.0.0.11", "127.0.0.1"]


def test_a_certificate_without_a_new_name_is_issued_again(tmp_path: Path) -> None:
    """A name added to node.yaml later reaches the certificate at the next start: the old
    certificate no longer covers every name, so it is re-issued."""
    before = load_config(raw(tmp_path))
    ca = create_cluster_ca(before, node_hosts(before))
    first = pki.load_node_certificate(node_dir(tmp_path)).fingerprint
    after = load_config(raw(tmp_path, dns_names=["db1.example.com"]))
    again = pki.ensure_node_certificate(ca, "n1", node_hosts(after), node_dir(tmp_path))
    assert again.fingerprint != first
    assert "db1.example.com" in again.hosts
