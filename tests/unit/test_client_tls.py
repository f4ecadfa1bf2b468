"""``hacore.backends.client_tls.ClientTls``: the one client-TLS record of the store plugins
(issue 12 point 5). The handshakes themselves are tested against real servers in
tests/integration/test_etcd_tls.py and test_zookeeper_tls.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from hacore.backends.client_tls import ClientTls
from hacore.backends.records import TlsFiles
from hacore.errors import ConfigError
from hacore.pki import create_ca, issue_node_certificate


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    directory = tmp_path_factory.mktemp("pki")
    ca = create_ca("client-tls", directory / "ca")
    issued = issue_node_certificate(ca, "a", ["127.0.0.1"], directory / "a")
    return TlsFiles(issued.ca_file, issued.cert_file, issued.key_file)


def test_the_node_material_is_trusted_alone_and_shown(node: TlsFiles) -> None:
    tls = ClientTls.from_node(node)
    assert tls == ClientTls(str(node.ca_file), str(node.cert_file), str(node.key_file))
    context = tls.context("etcd")
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert context.verify_flags & ssl.VERIFY_X509_STRICT
    # the cluster CA only: no system anchor was loaded next to it
    assert len(context.get_ca_certs()) == 1


def test_strict_x509_can_be_left_off(node: TlsFiles) -> None:
    context = ClientTls(str(node.ca_file)).context("etcd", strict_x509=False)
    assert not context.verify_flags & ssl.VERIFY_X509_STRICT


def test_unusable_files_are_a_config_error_naming_the_store_and_the_files(
    node: TlsFiles, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError, match=r"cannot use the ZooKeeper TLS files .*missing\.pem"):
        ClientTls(str(node.ca_file), str(missing), str(node.key_file)).context("ZooKeeper")


def test_settings_name_only_the_files_given() -> None:
    assert ClientTls().settings() == {}
    assert ClientTls("ca.pem").settings() == {"ca_file": "ca.pem"}
