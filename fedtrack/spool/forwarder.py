"""The site's forwarder: delivers every job spool in its folder until the folder is removed (`serve`),
or until all are delivered (`forward`), retrying with backoff. One per folder (a lock)."""

import fcntl
import glob
import logging
import os
import sqlite3
import subprocess
import sys
import time

from fedtrack.names import RETRY_CAP_ENV
from fedtrack.names import SPOOL_SUFFIX as SUFFIX
from fedtrack.spool.delivery import Delivery, describe_failure

FORWARDER_LOCK = ".forwarder.lock"
POLL = 0.2  # seconds between looks at an idle spool
BACKOFF = (0.5, 1, 2, 5, 10, 20, 30)  # seconds before each retry of a failing server; the last repeats
IDLE_EXIT = 30.0  # seconds a forwarder with nothing left to do stays before it exits

log = logging.getLogger("fedtrack.spool")


def _lock(spool_dir: str):
    """The site's forwarder lock (held by the one forwarder that delivers spool_dir), or None."""
    fd = os.open(os.path.join(spool_dir, FORWARDER_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


def backoff(failures: int) -> float:
    """Seconds before the next try after `failures` failures in a row: BACKOFF, at most the site's
    retry cap (FEDTRACK_RETRY_CAP; the stack's DELIVERY_RETRY_CAP, checked by fedtrack.knobs)."""
    cap = float(os.environ.get(RETRY_CAP_ENV) or BACKOFF[-1])
    return min(BACKOFF[min(failures, len(BACKOFF)) - 1], cap)


def forwarder_pid(spool_dir: str):
    """The pid of the forwarder delivering spool_dir, or None when none runs."""
    try:
        fd = os.open(os.path.join(spool_dir, FORWARDER_LOCK), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # the lock is free: no forwarder
    except BlockingIOError:
        text = os.read(fd, 32).decode(errors="replace").strip()
        return int(text) if text.isdigit() else None
    finally:
        os.close(fd)


def forward(spool_dir: str, idle_exit: float = IDLE_EXIT) -> int:
    """Deliver every spool in spool_dir; exit once all are delivered and closed (and idle_exit
    passed; never with idle_exit None), or when spool_dir is removed."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # retries are ours, with backoff
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    while True:
        if not os.path.isdir(spool_dir):
            log.info("%s is gone; nothing left to deliver", spool_dir)
            return 0
        fd = _lock(spool_dir)
        if fd is None:
            if idle_exit is None:  # serving: take over when the other forwarder exits
                time.sleep(5)
                continue
            return 0  # another forwarder serves this site
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)  # who holds it: forwarder_pid()
        except OSError:
            pass  # a full volume: the lock still works, only the pid is not shown
        deliveries, unopened = {}, {}
        idle_since = time.monotonic()
        try:
            while True:
                if not os.path.isdir(spool_dir):  # removed (a finished simulation, a cleaned site): nothing to keep
                    log.info("%s is gone; %d undelivered job spool(s) went with it; exiting", spool_dir, len(deliveries))
                    return 0
                paths = sorted(glob.glob(os.path.join(spool_dir, "*" + SUFFIX)))
                for path in paths:
                    if path not in deliveries:
                        if time.monotonic() < unopened.get(path, 0):
                            continue
                        try:
                            deliveries[path] = Delivery(path)
                        except sqlite3.Error as e:  # e.g. a spool its writer could not set up on a full volume
                            if path not in unopened:
                                log.warning("%s: cannot open it yet (%s); trying again every 10 s", path, e)
                            unopened[path] = time.monotonic() + 10
                            continue
                        unopened.pop(path, None)
                    d = deliveries[path]
                    if time.monotonic() < d.next_try:
                        continue
                    try:
                        done = d.step()
                        if d.failures:
                            log.warning("%s: tracking server answers again; delivering", path)
                        d.failures, d.last_error = 0, None
                    except Exception as e:  # noqa: BLE001 - any failure: keep the records, retry later
                        d.failures += 1
                        d.next_try = time.monotonic() + backoff(d.failures)
                        if str(e) != d.last_error:
                            log.warning("%s: %s", path, describe_failure(e))
                            d.last_error = str(e)
                        d.client = None  # log in afresh next time (a fixed password is picked up)
                        continue
                    if done:
                        d.close()
                        del deliveries[path]
                        for suffix in ("", "-wal", "-shm"):
                            if os.path.exists(path + suffix):
                                os.remove(path + suffix)
                        log.info("%s delivered", path)
                busy = any(d.counts()[0] for d in deliveries.values())
                if deliveries:
                    idle_since = time.monotonic()
                elif idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                    break
                # POLL at most, even while backing off: a removed folder stops it within POLL (tests/unit/test_spool.py).
                time.sleep(0 if busy and not any(d.failures for d in deliveries.values()) else POLL)
        finally:
            for d in deliveries.values():
                d.close()
            os.close(fd)
        # Released: a spool that appeared meanwhile keeps this forwarder (or the new one) going.
        if not glob.glob(os.path.join(spool_dir, "*" + SUFFIX)):  # none left, or spool_dir is gone
            return 0


def stop_forwarder(spool_dir: str, timeout: float = 10.0) -> bool:
    """Stop the forwarder of spool_dir, if one runs (what it has not delivered stays spooled)."""
    import signal

    pid = forwarder_pid(spool_dir)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while forwarder_pid(spool_dir) == pid and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def start_forwarder(spool_dir: str, log_path: str = None) -> None:
    """Start a detached forwarder for spool_dir unless one runs; it outlives the calling job."""
    fd = _lock(spool_dir)
    if fd is None:
        return
    os.close(fd)  # free: a new forwarder takes it (a race leaves exactly one)
    out = open(log_path or os.path.join(spool_dir, "forwarder.log"), "ab")
    subprocess.Popen(
        [sys.executable, "-m", "fedtrack.spool.cli", "forward", spool_dir],
        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
    )

