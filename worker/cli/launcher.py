"""`python -m worker run` (`make run`): the whole service on one machine, stopped by Ctrl-C.

It prepares what is missing (schema, a first model), starts the workers (one per
queue: scoring, monitoring, training, so that neither monitoring nor a retrain ever
delays a scheduled batch), beat, Flower and the Prometheus exporter as child processes, sends a first batch at
once, says where to look, and on Ctrl-C or SIGTERM stops every child it started.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from worker.cli.errors import PortTaken
from worker.settings import REPO_ROOT, Settings, redact


def check_port_free(
    address: str, port: int, setting: str, owner: str = "Flower", address_setting: str = "FLOWER_ADDRESS"
) -> None:
    """Bind as the server will (IPv4 or IPv6, by what the address is), so a taken port and an address
    this host cannot listen on are told apart before anything starts."""
    try:
        family, kind, _, _, where = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise PortTaken(
            f"{address_setting}={address} is not an address this host can listen on ({exc.strerror})"
        ) from None
    with socket.socket(family, kind) as sock:
        try:
            sock.bind(where)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise PortTaken(
                    f"{address_setting}={address}: cannot listen there ({exc.strerror}); give an address of this "
                    "host, e.g. 127.0.0.1, or 0.0.0.0 for every interface"
                ) from None
            raise PortTaken(
                f"port {port} on {address} is already taken (is another {owner} running?); "
                f"set {setting} to a free port, e.g. {setting}={port + 1} make run"
            ) from None


def celery_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "celery"), "-A", "worker", *args]


def _start(name: str, command: list[str], logs: Path) -> tuple[subprocess.Popen, Path]:
    log_path = logs / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=dict(os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
        )
    return process, log_path


def _stop_all(children: list[tuple[str, subprocess.Popen]]) -> None:
    for _, process in children:
        if process.poll() is None:
            process.terminate()  # warm shutdown: the main process lets its pool finish the running task
    for name, process in children:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        print(f"stopped {name}")


# The workers `make run` starts: name, queue, processes. Scoring gets both cores; monitoring and
# training one process each, so neither ever holds up a scheduled batch.
WORKERS = (("worker", "celery", 2), ("monitor", "monitoring", 1), ("trainer", "training", 1))


def run_everything(settings: Settings, first_model_rides: int = 200_000) -> int:
    from worker.cli.dispatching import dispatch_batch, wait_for_batch
    from worker.cli.preparation import initialize
    from worker.cli.report import default_output
    from worker.rides.generator import chicago_now, expected_rides

    check_port_free(settings.FLOWER_ADDRESS, settings.FLOWER_PORT, "FLOWER_PORT")
    check_port_free(
        settings.EXPORTER_ADDRESS,
        settings.EXPORTER_PORT,
        "EXPORTER_PORT",
        owner="exporter",
        address_setting="EXPORTER_ADDRESS",
    )
    initialize(settings, first_model_rides)
    logs = settings.LOCAL_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    children: list[tuple[str, subprocess.Popen]] = []

    def on_sigterm(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops everything the same way Ctrl-C does

    signal.signal(signal.SIGTERM, on_sigterm)
    # Ctrl-C must work even if we were started with SIGINT ignored (a shell's background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for name, queue, concurrency in WORKERS:
            process, _ = _start(
                name,
                celery_command(
                    "worker",
                    "--loglevel=INFO",
                    f"--concurrency={concurrency}",
                    f"--queues={queue}",
                    f"--hostname={name}@%h",
                ),
                logs,
            )
            children.append((name, process))
        beat, _ = _start(
            "beat",
            celery_command("beat", "--loglevel=INFO", f"--schedule={settings.LOCAL_DIR / 'celerybeat-schedule'}"),
            logs,
        )
        children.append(("beat", beat))
        flower, _ = _start(
            "flower",
            celery_command("flower", f"--port={settings.FLOWER_PORT}", f"--address={settings.FLOWER_ADDRESS}"),
            logs,
        )
        children.append(("flower", flower))
        exporter, _ = _start("exporter", [sys.executable, "-m", "worker", "exporter"], logs)
        children.append(("exporter", exporter))

        rides = settings.RIDES_PER_BATCH or expected_rides(chicago_now(), settings.BATCH_INTERVAL_SECONDS / 60)
        task_id, batch_id = dispatch_batch(rides, None)
        print(f"first batch: {rides} rides, batch {batch_id}")
        if wait_for_batch(settings, batch_id, task_id, timeout=300) != 0:
            print(f"the first batch did not complete; see {logs / 'worker.log'}", file=sys.stderr)
            return 1
        auth = " (basic auth: FLOWER_BASIC_AUTH)" if settings.FLOWER_BASIC_AUTH else " (no auth: keep it on 127.0.0.1)"
        print(
            "\nrunning. Where to look:\n"
            f"  Flower       http://{settings.FLOWER_ADDRESS}:{settings.FLOWER_PORT}{auth}\n"
            f"  exporter     http://{settings.EXPORTER_ADDRESS}:{settings.EXPORTER_PORT}/metrics (Prometheus)\n"
            "  status       .venv/bin/python -m worker status\n"
            f"  report       .venv/bin/python -m worker report --since 24h  (charts in one HTML file: {default_output(settings)})\n"
            f"  predictions  table ride_predictions in {redact(settings.database_url, settings)}\n"
            f"  logs         {logs}/worker.log, monitor.log, trainer.log, beat.log, flower.log, exporter.log\n"
            f"next batches every {settings.BATCH_INTERVAL_SECONDS:g} s on the clock. Ctrl-C stops everything.",
            flush=True,
        )
        while True:
            for name, process in children:
                if process.poll() is not None:
                    print(f"{name} exited with {process.returncode}; see {logs / (name + '.log')}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        print("\nstopping ...")
        _stop_all(children)
