"""The embedded broker hands a consumer each message whole or not at all (kombu issue #1551)."""

from __future__ import annotations

import os
import subprocess
import sys
from queue import Empty

import pytest
from kombu import Connection
from kombu.exceptions import ChannelError
from kombu.transport import virtual
from kombu.utils.json import dumps

from tests.support import REPO_ROOT
from worker import filesystem_broker
from worker.filesystem_broker import PARTIAL, Transport


@pytest.fixture(autouse=True)
def _own_broker_state(monkeypatch):
    """kombu keeps declared bindings in one state per process, shared by every filesystem connection:
    a binding an earlier test declared would not be written to this test's control folder again, and
    a message routed by that folder's empty table would be dropped without a word."""
    monkeypatch.setattr(Transport, "global_state", virtual.BrokerState())


def _connection(tmp_path) -> Connection:
    """Every folder under tmp_path, as celery_app sets them: kombu's default control folder is
    `control` in the working directory, where an exchange table would land in the checkout."""
    for sub in ("queue", "processed", "control"):
        (tmp_path / sub).mkdir(exist_ok=True)
    options = {
        "data_folder_in": str(tmp_path / "queue"),
        "data_folder_out": str(tmp_path / "queue"),
        "processed_folder": str(tmp_path / "processed"),
        "control_folder": str(tmp_path / "control"),
        "store_processed": False,
    }
    return Connection("filesystem://localhost/", transport=Transport, transport_options=options)


def test_a_consumer_polling_while_a_message_is_written_finds_nothing_then_the_whole_message(tmp_path, monkeypatch):
    """The consumer polls right while the producer writes (injected where the message is serialised into
    its file). kombu's own channel had created the file empty by then: the consumer took it and failed
    on json.loads(""), which stops a worker, and the message was lost."""
    with _connection(tmp_path) as producing, _connection(tmp_path) as consuming:
        consumer = consuming.default_channel
        seen_mid_write = []

        def polling_dumps(payload):
            try:
                seen_mid_write.append(consumer._get("jobs"))
            except Empty:
                seen_mid_write.append("nothing yet")
            return dumps(payload)

        with monkeypatch.context() as patched, producing.SimpleQueue("jobs") as queue:
            patched.setattr(filesystem_broker, "dumps", polling_dumps)
            queue.put({"batch": "adhoc-1"})
        assert seen_mid_write == ["nothing yet"]
        with consuming.SimpleQueue("jobs") as queue:
            message = queue.get(timeout=2)
            assert message.payload == {"batch": "adhoc-1"}
            message.ack()
    assert os.listdir(tmp_path / "queue") == []  # no partial file left behind


def test_a_message_that_cannot_be_written_leaves_no_partial_file(tmp_path, monkeypatch):
    with _connection(tmp_path) as producing:

        def failing_dumps(payload):
            raise OSError("disk full")

        monkeypatch.setattr(filesystem_broker, "dumps", failing_dumps)
        with (
            producing.SimpleQueue("jobs") as queue,
            pytest.raises(ChannelError, match=r"Cannot add file .*\.jobs\.msg"),
        ):
            queue.put({"batch": "adhoc-2"})
    assert [name for name in os.listdir(tmp_path / "queue") if name.endswith(PARTIAL)] == []


def test_the_app_uses_it_for_the_embedded_broker_only(tmp_path):
    probe = "from worker.celery_app import app; print(type(app.connection_for_write().transport).__module__)"
    for broker, expected in (
        ({}, "worker.filesystem_broker"),
        ({"CELERY_BROKER_URL": "redis://127.0.0.1:1/0"}, "kombu.transport.redis"),
    ):
        done = subprocess.run(
            [sys.executable, "-c", probe],
            cwd=REPO_ROOT,
            env={"PATH": "/usr/bin:/bin", "LOCAL_DIR": str(tmp_path), **broker},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.stdout.strip() == expected, done.stdout + done.stderr
