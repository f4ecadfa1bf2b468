"""The text of ``hacore cluster haproxy-config`` (:mod:`hacore.cluster.haproxy`), checked by a
real ``haproxy -c`` in each variant."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hacore.cluster.haproxy import HaproxyOptions, render, servers_of, tls_of
from hacore.errors import HacoreError

HAPROXY = shutil.which("haproxy")


def view(scheme: str = "https") -> dict[str, Any]:
    members: list[dict[str, Any]] = [
        {
            "name": f"n{i}",
            "host": f"10.0.0.{i}",
            "api_url": f"{scheme}://10.0.0.{i}:8008",
            "extra": {"replication": {"host": f"10.0.0.{i}", "port": 5432}},
        }
        for i in (1, 2)
    ]
    members.append({"name": "v6", "host": "fd00::3", "api_url": f"{scheme}://[fd00::3]:8008",
                    "extra": {"replication": {"host": "fd00::3", "port": 5433}}})  # fmt: skip
    members.append({"name": "blank", "api_url": f"{scheme}://10.0.0.9:8008", "extra": {}})
    return {"cluster": "prod", "members": members}


def haproxy_accepts(tmp_path: Path, text: str) -> None:
    if HAPROXY is None:
        pytest.skip("haproxy is not installed")
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    result = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_tls_variant_checks_against_the_ca_without_verifyhost(tmp_path: Path) -> None:
    from hacore import pki

    ca = pki.create_ca("haproxy", tmp_path / "ca")
    servers, skipped = servers_of(view())
    assert tls_of(view())
    assert skipped == ["blank: no database or API address in its record"]
    text = render(HaproxyOptions(cluster="prod", ca_file=str(ca.cert_file)), servers, skipped)
    assert "server n1 10.0.0.1:5432 check port 8008" in text
    assert "server v6 [fd00::3]:5433 check port 8008" in text
    assert f"check-ssl verify required ca-file {ca.cert_file}" in text
    assert "verifyhost" not in text
    assert "on-marked-down shutdown-sessions" in text
    assert "_manager" not in text
    haproxy_accepts(tmp_path, text)


def test_plain_variant_with_the_manager_port(tmp_path: Path) -> None:
    servers, _ = servers_of(view("http"))
    assert not tls_of(view("http"))
    options = HaproxyOptions(cluster="prod", manager_port=443, inter=0.5, stats_socket="/x.sock")
    text = render(options, servers)
    assert "check-ssl" not in text
    assert "inter 500ms fastinter 500ms downinter 500ms" in text
    assert "server n2 10.0.0.2:443 check port 8008" in text
    assert "bind :443" in text
    haproxy_accepts(tmp_path, text.replace("stats socket /x.sock", f"stats socket {tmp_path}/s"))


def test_probe_credentials_need_tls() -> None:
    servers, _ = servers_of(view("http"))
    with pytest.raises(HacoreError, match="need TLS"):
        render(HaproxyOptions(cluster="prod", probe_auth=("u", "p")), servers)
    text = render(HaproxyOptions(cluster="prod", ca_file="/ca", probe_auth=("u", "p")), servers)
    assert 'hdr Authorization "Basic dTpw"' in text
