"""SpoolWriter: appends one job's records at a site, from the training process (see fedtrack.spool)."""

import atexit
import collections
import json
import logging
import os
import sqlite3
import threading
import time

from fedtrack.names import SPOOL_SUFFIX as SUFFIX
from fedtrack.spool.failures import FailureLog
from fedtrack.spool.store import DEFAULT_MAX_RECORDS, connect, process_token, read_meta, set_meta, transaction

COMMIT_INTERVAL = 0.05  # seconds between the writer's commits: what a crash of the training process can lose

log = logging.getLogger("fedtrack.spool")


class SpoolWriter:
    """Appends one job's records at a site. Used from the training process only.

    Group commits: append() only queues the record (about a microsecond, no I/O on the caller's
    thread); a committer thread writes what is queued in one transaction every COMMIT_INTERVAL.
    What a crash of the training process can lose is what it logged in its last COMMIT_INTERVAL
    (plus the commit under way); close() and a normal exit commit everything first.

    A write the site's storage refuses (disk full, read-only or lost volume) loses that commit's
    records only: they are counted (`failed`, in `status` and the site's healthcheck), what is
    already spooled stays, and the next commit tries again, so spooling resumes once space returns.
    """

    def __init__(self, spool_dir: str, job_key: str, meta: dict, max_records: int = DEFAULT_MAX_RECORDS):
        self.spool_dir = spool_dir
        self.path = os.path.join(spool_dir, job_key + SUFFIX)
        self.max_records = max_records
        self.meta = dict(meta, writer=process_token(os.getpid()), closed=0, max_records=max_records)
        self.db = None
        self.refused = self.failed = 0
        self.failures = FailureLog(spool_dir, job_key)
        self.closed = False
        self._next_open = 0.0
        self._queue = collections.deque()  # (convert, item): appended by any thread, taken by commit()
        self._lock = threading.Lock()  # one commit at a time; the database is only touched under it
        self._stop = threading.Event()
        with self._lock:
            self._open()
        self._committer = threading.Thread(target=self._commit_every, name="spool-commit", daemon=True)
        self._committer.start()
        atexit.register(self.commit)  # a normal exit without close() keeps what was queued

    def _open(self) -> bool:
        """(Re)open the spool; False, with the failure logged, while the storage refuses it."""
        if self.db is not None:
            return True
        if time.monotonic() < self._next_open:
            return False
        db = None
        try:
            os.makedirs(self.spool_dir, exist_ok=True)
            db = connect(self.path)
            kept = read_meta(db)
            self.refused = max(self.refused, int(kept.get("refused", 0)))
            self.failed = max(self.failed, int(kept.get("failed", 0)))
            set_meta(db, failed=self.failed, **self.meta)
            self.last_seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]
        except (sqlite3.Error, OSError) as e:
            if db is not None:
                db.close()
            self._next_open = time.monotonic() + 1.0  # a full disk stays full for a while: try once a second
            self.failures.record(self.failed, e)
            return False
        self.db = db
        self.pending()  # sets _floor: no undelivered record is older (the forwarder only deletes)
        return True

    def pending(self) -> int:
        """Undelivered records in the spool (not those still queued)."""
        first = self.db.execute("SELECT MIN(seq) FROM records").fetchone()[0]
        self._floor = self.last_seq + 1 if first is None else first
        return 0 if first is None else self.last_seq - first + 1

    def append(self, kind: str, key: str, value=None, step: int = None, ts: int = None):
        """Queue one record for the next commit, stamped now unless ts (ms) is given."""
        self.put((kind, key, value, step, ts if ts is not None else int(time.time() * 1000)))

    def put(self, item, convert=None):
        """Queue item for the next commit; convert(item) gives its records (kind, key, value, step,
        ts), run on the committing thread, so the caller pays for neither parsing nor I/O."""
        if self.closed:
            raise RuntimeError("spool is closed")
        self._queue.append((convert, item))

    def _commit_every(self):
        while not self._stop.wait(COMMIT_INTERVAL):
            self.commit()

    def commit(self) -> int:
        """Write what is queued in one transaction; the number of records written."""
        with self._lock:
            return self._commit()

    def _commit(self) -> int:
        rows = []
        while self._queue:
            convert, item = self._queue.popleft()
            try:
                records = [item] if convert is None else convert(item)
            except Exception as e:  # noqa: BLE001 - one unreadable record must not stop the others
                self.failed += 1
                log.error("tracking spool %s: a record could not be read (%s); it is counted as lost", self.path, e)
                continue
            for kind, key, value, step, ts in records:
                rows.append((kind, key, None if value is None else (value if isinstance(value, str) else json.dumps(value)),
                             step, ts))
        if not rows:
            return 0
        if not self._open():
            self._lost(len(rows))
            return 0
        try:
            # Full: new records are refused, the run's final status never is.
            room = self.max_records - (self.last_seq - self._floor + 1)
            if len(rows) > room:
                room = self.max_records - self.pending()
            taken, refused = [], 0
            for row in rows:
                if row[0] == "end" or len(taken) < room:
                    taken.append(row)
                else:
                    refused += 1
            with transaction(self.db):
                self.db.executemany("INSERT INTO records (kind, key, value, step, ts) VALUES (?, ?, ?, ?, ?)", taken)
                last_seq = self.db.execute("SELECT last_insert_rowid()").fetchone()[0] if taken else self.last_seq
                if refused:
                    first = self.refused == 0
                    self.refused += refused
                    set_meta(self.db, refused=self.refused)
                if self.failures.open:  # writes work again: keep the count with the spool, end the alarm
                    set_meta(self.db, failed=self.failed)
                if self.closed:  # with the final status: a forwarder never sees it spooled but the spool open
                    set_meta(self.db, closed=1, refused=self.refused, failed=self.failed)
        except sqlite3.Error as e:
            self._lost(len(rows), e)
            return 0
        self.last_seq = last_seq
        if refused and (first or self.refused // 10000 != (self.refused - refused) // 10000):
            log.warning(
                "tracking spool %s is full (%d undelivered records, limit %d): %d record(s) refused so far; "
                "start the site's MLflow server or raise the limit",
                self.path, self.pending(), self.max_records, self.refused,
            )
        if self.failures.open:
            self.failures.clear(self.failed)
        return len(taken)

    def _lost(self, n: int, error: Exception = None):
        """A commit of n records failed: count them; a connection that hit a full disk keeps failing
        after space returns, so the next commit opens a new one (at most once a second)."""
        before, self.failed = self.failed, self.failed + n
        if error is not None:
            if before == 0 or before // 10000 != self.failed // 10000:
                log.error("tracking spool %s: a write failed (%s): %d record(s) lost so far; free space on the "
                          "site's volume, spooling resumes by itself", self.path, error, self.failed)
            try:
                self.db.close()
            except sqlite3.Error:
                pass
            self.db, self._next_open = None, time.monotonic() + 1.0
        self.failures.record(self.failed, error)

    def close(self, status: str = "FINISHED"):
        """The job ended: commit what is queued and the run's final status; the forwarder sets it
        after the last record."""
        if self.closed:
            return
        self._stop.set()
        atexit.unregister(self.commit)
        with self._lock:  # the committer thread commits the final status only with closed set
            self.append("end", "status", status)
            self.closed = True
            self._next_open = 0.0  # the last commit: try the storage once more now, whatever failed before
            failed = self.failed
            self._commit()
            if self.failed > failed:
                self.failures.record(self.failed, force=True)  # the final count, for `status`
                log.error("tracking spool %s: could not spool the run's final status %s; with its job gone, the "
                          "forwarder marks the run FAILED", self.path, status)
            if self.db is not None:
                self.db.close()
                self.db = None

