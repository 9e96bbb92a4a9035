"""`make run` refuses a taken Flower port before it starts anything."""

from __future__ import annotations

import socket
import subprocess
import sys

from tests.support import REPO_ROOT


def test_taken_flower_port_is_named_with_the_setting_to_change(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "worker", "run"],
            cwd=REPO_ROOT,
            env={"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path), "FLOWER_PORT": str(port)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is already taken" in done.stderr
    assert "FLOWER_PORT" in done.stderr
    assert not (tmp_path / "logs").exists(), "nothing may be started when the port is taken"


def test_an_address_that_is_not_this_hosts_is_named_not_reported_as_a_taken_port():
    import pytest

    from worker.cli.errors import PortTaken
    from worker.cli.launcher import check_port_free

    for address, why in (
        ("999.1.1.1", "is not an address"),  # unresolvable
        ("nosuchhost.invalid", "is not an address"),
        ("192.0.2.1", "Cannot assign requested address"),  # TEST-NET-1: a valid address of no host here
    ):
        with pytest.raises(PortTaken) as refused:
            check_port_free(address, 0, "EXPORTER_PORT", owner="exporter", address_setting="EXPORTER_ADDRESS")
        assert "already taken" not in str(refused.value) and why in str(refused.value), str(refused.value)
        assert "EXPORTER_ADDRESS" in str(refused.value)
    check_port_free("::1", 0, "EXPORTER_PORT", owner="exporter")  # IPv6 loopback: the exporter listens on it
