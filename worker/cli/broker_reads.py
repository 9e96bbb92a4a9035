"""What the exporter learns from the broker without writing to it: queue length and live workers.

The exporter used to ping every worker through Celery's control API and to declare the queue
it measured (creating it if missing). A ping is a broadcast on the same channel as `shutdown`
and `revoke`, so a broker user allowed to ping may stop every worker; a declare is a write. Here:

- the queue's length comes from a passive declare (Redis: EXISTS and LLEN), and a queue that
  does not exist holds 0 messages;
- which workers are alive comes from the heartbeats they publish anyway (`worker-heartbeat`
  every 2 s, `worker-online`, `worker-offline`). On Redis they are read with one PSUBSCRIBE on
  the worker events' channel, so the exporter's Redis user needs nothing else
  (deploy/redis/start.sh). On any other broker (the embedded one of `make run`) Celery's own
  event receiver listens, which declares a queue of its own: no shared broker is guarded there.

A worker is alive while its last heartbeat is younger than Celery's own expiry (twice its
interval: 4 s by default) and until it says goodbye (worker-offline). That is Celery's events
State, as Flower keeps it; Flower's /metrics gauge differs only in never expiring a worker that
died without a goodbye (mher/flower#1128).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery.events.event import EVENT_EXCHANGE_NAME
from kombu.exceptions import ChannelError
from kombu.serialization import prepare_accept_content
from kombu.utils.json import loads

log = logging.getLogger(__name__)

# Celery workers send a heartbeat this often (worker --heartbeat-interval, 2 s by default): the
# listener has heard every live worker once it has listened this long.
HEARTBEAT_SECONDS = 2.0
RECONNECT_SECONDS = 2.0
# Events are JSON; a message of another type on the channel is dropped, never deserialized.
ACCEPT = prepare_accept_content(["json"])


class WorkersUnknown(RuntimeError):
    """The listener is not (yet, or no longer) hearing the broker: which workers live is unknown."""


def waiting_messages(channel: Any, queue: str) -> int:
    """Messages waiting in `queue`, read without declaring it (a queue never made holds none)."""
    try:
        return channel.queue_declare(queue, passive=True).message_count
    except ChannelError:  # NOT_FOUND: on Redis an empty queue does not exist
        return 0


class WorkerHeartbeats:
    """Listens, in a thread of its own, to the workers' heartbeat events; reconnects when the broker comes back."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state = app.events.State()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._since: float | None = None  # monotonic time the current subscription began
        self._error = "not listening yet"
        self._thread = threading.Thread(target=self._run, name="exporter-heartbeats", daemon=True)

    def start(self) -> WorkerHeartbeats:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def wait_ready(self, seconds: float) -> bool:
        """Wait (at most `seconds`) until the listener has heard a whole heartbeat interval."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self._lock:
                since = self._since
            if since is not None and time.monotonic() - since >= HEARTBEAT_SECONDS:
                return True
            time.sleep(0.1)
        return False

    def alive(self) -> list[str]:
        """The workers whose heartbeats arrive, by name; WorkersUnknown while not listening."""
        with self._lock:
            if self._since is None:
                raise WorkersUnknown(self._error)
            return sorted(name for name, worker in self.state.workers.items() if worker.alive)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    conn.ensure_connection(max_retries=1, timeout=RECONNECT_SECONDS * 2)
                    if conn.transport.driver_type == "redis":
                        self._listen_to_redis(conn)
                    else:
                        self._listen_with_receiver(conn)
            except Exception as exc:  # the broker is down or refused us: unknown until it answers again
                with self._lock:
                    lost = self._since is not None
                    self._since = None
                    self._error = f"not hearing the broker: {type(exc).__name__}: {exc}"
                if lost:
                    log.warning("exporter: lost the worker heartbeats: %s: %s", type(exc).__name__, exc)
                self._stop.wait(RECONNECT_SECONDS)

    def _listening(self) -> None:
        with self._lock:
            self._since = time.monotonic()

    def _heard(self, event: dict) -> None:
        with self._lock:
            self.state.event(event)

    def _listen_to_redis(self, conn: Any) -> None:
        """PSUBSCRIBE to the worker events' topic, as kombu names it (prefix with the database number)."""
        channel = conn.default_channel  # connecting: AUTH, HELLO, PING
        topic = f"{channel.keyprefix_fanout}{EVENT_EXCHANGE_NAME}/worker.*"
        normalise = self.app.events.Receiver(conn, handlers={})  # only its event_from_message: clocks, times
        pubsub = channel.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.psubscribe(topic)
            self._listening()
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                body = channel.Message(loads(message["data"]), channel=channel, accept=ACCEPT).decode()
                _, event = normalise.event_from_message(body)
                self._heard(event)
        finally:
            pubsub.close()

    def _listen_with_receiver(self, conn: Any) -> None:
        receiver = self.app.events.Receiver(conn, handlers={"*": self._heard}, routing_key="worker.#", accept=["json"])
        self._listening()
        while not self._stop.is_set():
            try:
                receiver.capture(limit=None, timeout=HEARTBEAT_SECONDS * 2, wakeup=False)
            except TimeoutError:
                continue
