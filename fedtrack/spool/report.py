"""What a site's spool holds: undelivered, refused and lost records (`make status`, `make clean`, the
client's healthcheck)."""

import glob
import os
import sqlite3

from fedtrack.names import SPOOL_SUFFIX as SUFFIX
from fedtrack.spool.delivery import Delivery
from fedtrack.spool.failures import FailureLog


def counts(spool_dir: str) -> dict:
    """Undelivered, refused and failed records of every job spooled in spool_dir, and whether
    spool writes are failing now (from the failure log, which a full volume cannot stop)."""
    out = {"pending": 0, "refused": 0, "failed": 0, "jobs": 0, "failing": None, "unreadable": 0, "rejected_models": 0}
    failed = {}
    for path in glob.glob(os.path.join(spool_dir, "*" + SUFFIX)):
        if os.path.getsize(path) == 0:
            continue  # a writer that could not set its spool up (a full volume): nothing in it
        try:
            d = Delivery(path)
        except sqlite3.Error:
            out["unreadable"] += 1  # e.g. its -shm cannot be made on a full volume: what it holds is unknown
            continue
        try:
            p, r, f, rejected = d.counts()
            out["rejected_models"] += rejected
        finally:
            d.close()
        out["pending"] += p
        out["refused"] += r
        out["jobs"] += 1
        failed[os.path.basename(path)[: -len(SUFFIX)]] = f
    for state in FailureLog.read(spool_dir):
        job = state.get("job", "?")
        failed[job] = max(failed.get(job, 0), int(state.get("failed", 0)))
        if state.get("failing"):
            out["failing"] = state.get("error") or "spool writes fail"
    out["failed"] = sum(failed.values())
    return out


def status(spool_dir: str) -> str:
    c = counts(spool_dir)
    line = (f"{c['pending']} record(s) spooled and undelivered in {c['jobs']} job spool(s), "
            f"{c['refused']} refused (spool full), {c['failed']} lost (spool write failed)")
    if c["failing"]:
        line += f"; spool writes are FAILING now ({c['failing']}): free space on the site's volume"
    if c["unreadable"]:
        line += f"; {c['unreadable']} job spool(s) cannot be read now"
    if c["rejected_models"]:
        line += f"; {c['rejected_models']} model folder(s) refused (see the forwarder's log)"
    return line

