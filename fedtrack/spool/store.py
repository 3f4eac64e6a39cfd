"""The spool's on-disk format: one SQLite file per job (WAL), its records and its meta, and the
transactions every writer and reader of it goes through."""

import contextlib
import os
import sqlite3

DEFAULT_MAX_RECORDS = 1_000_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,      -- metric | param | tag | text | model | end
    key TEXT NOT NULL,
    value TEXT,
    step INTEGER,
    ts INTEGER NOT NULL      -- milliseconds since the epoch, when it was logged
);
"""


def connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; WAL keeps it fast
    db.executescript(SCHEMA)
    return db


def read_meta(db) -> dict:
    return dict(db.execute("SELECT key, value FROM meta"))


@contextlib.contextmanager
def transaction(db):
    """One write transaction (the caller's, if one is open), taken at once: other connections see
    all of its writes or none."""
    if db.in_transaction:
        yield
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.in_transaction:  # (SQLite may have rolled it back itself, e.g. on a full disk)
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def set_meta(db, **values):
    """Set values together. Key by key, a forwarder could see a new spool's server but not its writer,
    take the job for dead, end the run FAILED and delete the spool under the running job."""
    with transaction(db):
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in values.items()])


def process_token(pid: int) -> str:
    """pid plus its start time, so a reused pid is not taken for the writer."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f"{pid}:{f.read().rsplit(')', 1)[1].split()[19]}"
    except OSError:
        return f"{pid}:?"


def alive(token: str) -> bool:
    pid = int(token.split(":")[0])
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return process_token(pid) == token

