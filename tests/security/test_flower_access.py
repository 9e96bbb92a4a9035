"""Why Prometheus gets no Flower login (issue 18, item 5): a real Flower 2.2 with basic auth.

Its /metrics answers everyone, with no password or a wrong one, so a scrape password proves
nothing; and every Flower user may use the whole API (revoke tasks, shut workers down), so a
scrape login would have been an admin's. The compose file and prometheus.yml therefore give
Prometheus none (tests/unit/test_compose.py checks that); who reaches /metrics is decided by the
network and the 127.0.0.1 binding instead.
"""

from __future__ import annotations

import base64
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import CELERY
from tests.support import REPO_ROOT, free_port, stop_process_group, wait_for_http

pytestmark = pytest.mark.integration

OPERATOR = ("ops", "ops-secret-5d1c")


@pytest.fixture(scope="module")
def flower(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Flower on the embedded broker (no server needed), with one basic-auth user, as compose runs it."""
    root: Path = tmp_path_factory.mktemp("flower")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "FLOWER_", "MLFLOW_"))},
        "LOCAL_DIR": str(root),
        "PYTHONPATH": str(REPO_ROOT),
        "FLOWER_BASIC_AUTH": ":".join(OPERATOR),
        "FLOWER_ADDRESS": "127.0.0.1",
        "FLOWER_PORT": str(port),
    }
    with open(root / "flower.log", "ab") as log:
        process = subprocess.Popen(
            [str(CELERY), "-A", "worker", "flower"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_for_http(f"{url}/healthcheck", process, 90), (root / "flower.log").read_text()[-3000:]
        yield url
    finally:
        stop_process_group(process)


def status(url: str, user: tuple[str, str] | None = None, method: str = "GET") -> int:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(user).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_flowers_metrics_answer_without_a_password_or_with_a_wrong_one(flower: str):
    assert status(f"{flower}/metrics") == 200
    assert status(f"{flower}/metrics", ("prometheus", "not-a-password")) == 200
    # ... while its API does ask.
    assert status(f"{flower}/api/workers") == 401
    assert status(f"{flower}/api/workers", ("ops", "wrong")) == 401
    assert status(f"{flower}/api/workers", OPERATOR) == 200


def test_every_flower_user_may_revoke_tasks_and_shut_workers_down(flower: str):
    """No roles in Flower: the one login there is may use the control API (a scrape user would have too)."""
    assert status(f"{flower}/api/task/revoke/00000000-0000-0000-0000-000000000000", method="POST") == 401
    assert status(f"{flower}/api/task/revoke/00000000-0000-0000-0000-000000000000", OPERATOR, "POST") == 200
    # Refused for an unknown worker, but past authentication: the route is open to any user.
    assert status(f"{flower}/api/worker/shutdown/celery@nowhere", OPERATOR, "POST") == 404
