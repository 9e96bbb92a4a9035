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
