"""Durable, site-local delivery of tracking records to the site's own MLflow server.

The training side only appends records to a spool on the site's persistent storage (one SQLite
file per job, in `<site workspace>/tracking-spool/`), committed in groups by a thread of its own
(SpoolWriter): no I/O on the training thread. A forwarder process (one per site: `serve`, started with the site's container, or
`forward`, started by the receiver when none runs) delivers them in order and in batches,
retrying with backoff until the server accepts them, and deletes a record only after the server
has it. It outlives the job: records spooled while the server is down arrive after it returns,
and the run then gets its real final status. It always runs this file as installed (at a site,
the image's copy), never a copy on a volume that a job could write.

At a deployed site the forwarder sends only to the site's own server (FEDTRACK_TRACKING_URI) and
logs in there with the site's writer account (FEDTRACK_MLFLOW_USERNAME and the password in the
file FEDTRACK_MLFLOW_PASSWORD_FILE); a spool naming any other server is refused.

Exactly once as seen in MLflow: a metric keeps the timestamp of its log call, and MLflow's store
drops a point identical to one it holds (key, value, timestamp, step), so a batch re-sent after
a lost answer adds nothing. Params are re-sent with the same value; tags and text artifacts
overwrite. The run is found again by its `job_id` and `site` tags before one is created.

A `model` record names a folder (the final model, saved by the training script in MLflow's
format): its files become the run's artifacts under the record's key (re-sent, they overwrite),
then the folder is removed. Only a folder inside the spool's own folder is uploaded: any other
(a job must not make the forwarder upload, e.g., the site's keys) is refused and counted.

Bounded: a spool holds at most `max_records` undelivered records; past that, new records are
refused and counted (a warning in the site's log, and in `status`); what is spooled is kept.
A write the storage refuses (disk full) is counted too (SpoolWriter); the forwarder's own writes
(deleting what was delivered) are retried, and a re-sent batch adds nothing.

    python3 spool.py serve DIR        deliver whatever appears in DIR, until DIR is removed
    python3 spool.py forward DIR      deliver everything in DIR, then exit
    python3 spool.py status DIR       one line: undelivered, refused and lost record counts
    python3 spool.py count DIR        the number of undelivered records (exit 1 if a spool cannot be read)
"""

import atexit
import collections
import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

FORWARDER_LOCK = ".forwarder.lock"
SUFFIX = ".spool"
DEFAULT_MAX_RECORDS = 1_000_000
BATCH = 1000  # MLflow's log-batch limits: 1000 metrics, 100 params, 100 tags per request
POLL = 0.2  # seconds between looks at an idle spool
BACKOFF = (0.5, 1, 2, 5, 10, 20, 30)
COMMIT_INTERVAL = 0.05  # seconds between the writer's commits: what a crash of the training process can lose
IDLE_EXIT = 30.0  # seconds a forwarder with nothing left to do stays before it exits
SITE_URI_ENV = "FEDTRACK_TRACKING_URI"  # set at a deployed site: its own MLflow, the only destination
# MLflow 3's UI opens an experiment in its GenAI views unless this tag says it is model training.
EXPERIMENT_KIND, TRAINING = "mlflow.experimentKind", "custom_model_development"
USER_ENV, PASSWORD_FILE_ENV = "FEDTRACK_MLFLOW_USERNAME", "FEDTRACK_MLFLOW_PASSWORD_FILE"

log = logging.getLogger("fedtrack.spool")

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


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes; WAL keeps it fast
    db.executescript(SCHEMA)
    return db


def _meta(db) -> dict:
    return dict(db.execute("SELECT key, value FROM meta"))


@contextlib.contextmanager
def _transaction(db):
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


def _set_meta(db, **values):
    """Set values together. Key by key, a forwarder could see a new spool's server but not its writer,
    take the job for dead, end the run FAILED and delete the spool under the running job."""
    with _transaction(db):
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", [(k, str(v)) for k, v in values.items()])


def _process_token(pid: int) -> str:
    """pid plus its start time, so a reused pid is not taken for the writer."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f"{pid}:{f.read().rsplit(')', 1)[1].split()[19]}"
    except OSError:
        return f"{pid}:?"


def _alive(token: str) -> bool:
    pid = int(token.split(":")[0])
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return _process_token(pid) == token


# ------------------------------------------------------------------------------------ writer


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
        self.meta = dict(meta, writer=_process_token(os.getpid()), closed=0, max_records=max_records)
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
            db = _connect(self.path)
            kept = _meta(db)
            self.refused = max(self.refused, int(kept.get("refused", 0)))
            self.failed = max(self.failed, int(kept.get("failed", 0)))
            _set_meta(db, failed=self.failed, **self.meta)
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
            with _transaction(self.db):
                self.db.executemany("INSERT INTO records (kind, key, value, step, ts) VALUES (?, ?, ?, ?, ?)", taken)
                last_seq = self.db.execute("SELECT last_insert_rowid()").fetchone()[0] if taken else self.last_seq
                if refused:
                    first = self.refused == 0
                    self.refused += refused
                    _set_meta(self.db, refused=self.refused)
                if self.failures.open:  # writes work again: keep the count with the spool, end the alarm
                    _set_meta(self.db, failed=self.failed)
                if self.closed:  # with the final status: a forwarder never sees it spooled but the spool open
                    _set_meta(self.db, closed=1, refused=self.refused, failed=self.failed)
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


class FailureLog:
    """Failed spool writes of one job, kept where a full spool volume cannot stop them: a small
    file in the temp folder (a tmpfs in the site's container), read by `status` and the healthcheck."""

    def __init__(self, spool_dir: str, job_key: str):
        self.spool_dir = os.path.abspath(spool_dir)
        self.job = job_key
        self.path = self._prefix(spool_dir) + job_key + ".json"
        self.open = False
        self._written = 0.0

    def record(self, failed: int, error: Exception = None, force: bool = False):
        self.open = True
        now = time.monotonic()
        if error is None and not force and now - self._written < 1.0:
            return  # at most one write a second while every log call fails: the count lags by up to 1 s
        self._written = now
        self._write({"spool": self.spool_dir, "job": self.job, "failed": failed, "failing": True,
                     "error": str(error) if error else None, "at": int(time.time())})

    def clear(self, failed: int):
        self.open = False
        self._write({"spool": self.spool_dir, "job": self.job, "failed": failed, "failing": False, "error": None, "at": int(time.time())})

    def _write(self, state: dict):
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.replace(tmp, self.path)
        except OSError:
            pass  # the temp folder itself is full: the count still reaches the spool when it can

    @staticmethod
    def _prefix(spool_dir: str) -> str:
        """Where the failure files of spool_dir's jobs go: one folder, named apart per spool."""
        digest = hashlib.sha1(os.path.abspath(spool_dir).encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), "fedtrack-spool-failures", digest + "-")

    @staticmethod
    def read(spool_dir: str) -> list:
        states = []
        for path in glob.glob(FailureLog._prefix(spool_dir) + "*.json"):
            try:
                with open(path) as f:
                    states.append(json.load(f))
            except (OSError, ValueError):
                pass
        return states


# ------------------------------------------------------------------------------------ forwarder


class Delivery:
    """Delivers one job's spool to its MLflow server."""

    def __init__(self, path: str):
        self.path = path
        self.db = _connect(path)
        self.client = self.creds = None
        self.failures = 0
        self.next_try = 0.0
        self.last_error = None

    def close(self):
        self.db.close()

    def _client(self, uri: str):
        if self.client is None:
            from mlflow.tracking import MlflowClient

            use_site_credentials(uri)
            self.client = MlflowClient(tracking_uri=uri)
            self.creds = None
        return self.client

    def _run_id(self, meta: dict) -> str:
        if meta.get("run_id"):
            return meta["run_id"]
        client = self._client(meta["tracking_uri"])
        exp = client.get_experiment_by_name(meta["experiment_name"])
        # No artifact location from here: the site's server stores and serves the artifacts.
        exp_id = exp.experiment_id if exp else client.create_experiment(
            meta["experiment_name"], tags={"site": meta["site"], EXPERIMENT_KIND: TRAINING})
        if exp and exp.tags.get(EXPERIMENT_KIND) != TRAINING:  # made by an earlier version, or by hand
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND, TRAINING)
        found = client.search_runs(
            [exp_id], filter_string=f"tags.job_id = '{meta['job_id']}' and tags.site = '{meta['site']}'", max_results=1
        )
        if found:
            run_id = found[0].info.run_id
        else:
            tags = {"site": meta["site"], "job_id": meta["job_id"], "mlflow.runName": meta["run_name"]}
            run_id = client.create_run(exp_id, start_time=int(meta["created_ms"]), tags=tags, run_name=meta["run_name"]).info.run_id
        _set_meta(self.db, run_id=run_id)
        return run_id

    def step(self) -> bool:
        """Send what is pending, as far as the server takes it. True when the spool is done."""
        meta = _meta(self.db)
        if "tracking_uri" not in meta:
            return False  # its writer has not set it up yet (a full volume): nothing spooled, nothing to do
        rows = self.db.execute("SELECT seq, kind, key, value, step, ts FROM records ORDER BY seq LIMIT ?", (BATCH,)).fetchall()
        if not rows:
            if meta.get("closed") == "1":
                return True
            if not _alive(meta.get("writer", "0:?")):
                self._end_abandoned()
            return False
        client = self._client(meta["tracking_uri"])
        run_id = self._run_id(meta)
        metrics, params, tags, last, uploaded = [], [], [], None, None
        for seq, kind, key, value, step, ts in rows:
            if kind in ("text", "model", "end") and (metrics or params or tags):
                break  # send the batch before it, then this one
            if kind == "metric":
                metrics.append({"key": key, "value": _json_number(float(value)), "timestamp": ts, "step": step or 0})
            elif kind == "param":
                params.append({"key": key, "value": value})
            elif kind == "tag":
                tags.append({"key": key, "value": value})
            elif kind == "text":
                client.log_text(run_id, value, key)
                last = seq
                break
            elif kind == "model":
                uploaded = self._log_model(client, run_id, key, value)
                last = seq
                break
            elif kind == "end":
                failed, refused = int(meta.get("failed", 0)), int(meta.get("refused", 0))
                rejected = int(meta.get("rejected_models", 0))
                if failed or refused or rejected:  # the run says itself that it is not complete
                    client.set_tag(run_id, "records_lost", f"{failed} failed spool write(s), {refused} refused (spool full)"
                                   + (f", {rejected} model folder(s) refused" if rejected else ""))
                client.set_terminated(run_id, status=value, end_time=ts)
                last = seq
                break
            last = seq
            if len(params) == 100 or len(tags) == 100:
                break
        if metrics or params or tags:
            self._log_batch(meta["tracking_uri"], {"run_id": run_id, "metrics": metrics, "params": params, "tags": tags})
        self._ack(last)
        if uploaded:  # only once acknowledged: until then a retry uploads it again
            shutil.rmtree(uploaded, ignore_errors=True)
        return False

    def _end_abandoned(self):
        """The job died without closing its spool and all it logged is delivered: mark the run FAILED.
        Looked at again under the write lock, so a writer that (re)opened the spool meanwhile is seen."""
        with _transaction(self.db):
            meta = _meta(self.db)
            empty = self.db.execute("SELECT 1 FROM records LIMIT 1").fetchone() is None
            ended = meta.get("closed") != "1" and empty and not _alive(meta.get("writer", "0:?"))
            if ended:
                self.db.execute("INSERT INTO records (kind, key, value, step, ts) VALUES ('end', 'status', 'FAILED', NULL, ?)",
                                (int(time.time() * 1000),))
                _set_meta(self.db, closed=1)
        if ended:
            log.warning("%s: its job ended without closing it; the run will be marked FAILED", self.path)

    def _log_model(self, client, run_id: str, key: str, value: str):
        """Upload a model folder as the run's artifacts under key (and register it, when asked);
        the folder to remove, or None when it was refused (counted, and acknowledged)."""
        spool_dir = os.path.realpath(os.path.dirname(os.path.abspath(self.path)))
        try:
            spec = json.loads(value)
            folder = os.path.realpath(spec["dir"])
        except (TypeError, ValueError, KeyError):  # unreadable: it must not hold up the records after it
            spec, folder = {"dir": value}, None
        if folder is None:
            why = "the record names no folder"
        elif os.path.commonpath([folder, spool_dir]) != spool_dir or folder == spool_dir:
            why = "it is outside the spool folder"
        elif not os.path.isdir(folder):
            why = "it does not exist"
        elif any(os.path.islink(os.path.join(d, n)) for d, dirs, files in os.walk(folder) for n in dirs + files):
            why = "it holds a link"  # which could point anywhere
        else:
            client.log_artifacts(run_id, folder, artifact_path=key)
            if spec.get("register"):
                self._register(client, run_id, key, spec["register"])
            return folder
        rejected = int(_meta(self.db).get("rejected_models", 0)) + 1
        _set_meta(self.db, rejected_models=rejected)
        log.error("%s: model folder %s not uploaded: %s; counted as lost (%d so far)", self.path, spec["dir"], why, rejected)
        return None

    def _register(self, client, run_id: str, key: str, name: str):
        """A version of registered model `name` from this run's artifacts, once per run. A failure
        leaves the model in the run (to register by hand) and delivery going."""
        source = f"runs:/{run_id}/{key}"
        try:
            if not client.search_registered_models(filter_string=f"name = '{name}'"):
                client.create_registered_model(name)
            if not client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
                client.create_model_version(name, source=source, run_id=run_id)
        except Exception as e:  # noqa: BLE001 - e.g. the forwarder's account may not write the registry
            log.error("%s: could not register %s as model %r (%s); register it by hand", self.path, source, name,
                      describe_failure(e))

    def _log_batch(self, uri: str, body: dict):
        """MLflow's log-batch request, built here from the spool's rows: the client's entity and
        protobuf round trip cost more than the request itself."""
        from mlflow.utils.rest_utils import MlflowHostCreds, http_request_safe

        if self.creds is None:
            self.creds = MlflowHostCreds(
                uri, username=os.environ.get("MLFLOW_TRACKING_USERNAME"), password=os.environ.get("MLFLOW_TRACKING_PASSWORD"),
                ignore_tls_verification=os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true",
                server_cert_path=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))
        http_request_safe(self.creds, "/api/2.0/mlflow/runs/log-batch", "POST", json=body)

    def _ack(self, last_seq: int):
        """The server has everything up to last_seq: drop it from the spool."""
        self.db.execute("DELETE FROM records WHERE seq <= ?", (last_seq,))

    def counts(self) -> tuple:
        """(undelivered, refused, failed) records and refused model folders of this job's spool."""
        meta = _meta(self.db)
        pending = self.db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        return pending, int(meta.get("refused", 0)), int(meta.get("failed", 0)), int(meta.get("rejected_models", 0))


def _json_number(x: float):
    """x as protobuf's JSON mapping writes it: NaN and infinities (a diverged loss) as strings."""
    if math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def check_destination(uri: str):
    """At a deployed site (FEDTRACK_TRACKING_URI set by the site), refuse any server but its own."""
    site_uri = os.environ.get(SITE_URI_ENV)
    if site_uri and uri.rstrip("/") != site_uri.rstrip("/"):
        raise PermissionError(f"this site delivers only to its own MLflow server {site_uri} ({SITE_URI_ENV}), not to {uri}")


def use_site_credentials(uri: str):
    """At a deployed site: refuse any server but the site's own, and log in there as its writer."""
    check_destination(uri)
    if not os.environ.get(SITE_URI_ENV):
        return  # on a host without a site configuration (the simulator): as configured by the job
    password_file = os.environ.get(PASSWORD_FILE_ENV)
    if password_file:
        with open(password_file) as f:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = f.read().strip()
        os.environ["MLFLOW_TRACKING_USERNAME"] = os.environ.get(USER_ENV, "forwarder")


def describe_failure(e: Exception) -> str:
    """One line saying what went wrong and, for a refused login, what to fix."""
    text = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
    if "error code 401" in text or "error code 403" in text:
        code = "401" if "error code 401" in text else "403"
        return (f"the site's MLflow server refused the forwarder's login (HTTP {code}): fix the password of "
                f"{os.environ.get(USER_ENV, 'its account')!r} in {os.environ.get(PASSWORD_FILE_ENV, 'its secret')}; "
                f"records stay spooled until then")
    return f"delivery failed ({text}); records kept, retrying"


def _lock(spool_dir: str):
    """The site's forwarder lock (held by the one forwarder that delivers spool_dir), or None."""
    fd = os.open(os.path.join(spool_dir, FORWARDER_LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


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
                        d.next_try = time.monotonic() + BACKOFF[min(d.failures, len(BACKOFF)) - 1]
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
        [sys.executable, os.path.abspath(__file__), "forward", spool_dir],
        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
    )


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


def main(argv) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if len(argv) != 2 or argv[0] not in ("serve", "forward", "status", "count"):
        print(__doc__.split("\n\n")[-1], file=sys.stderr)
        return 2
    if argv[0] in ("status", "count"):
        if not os.path.isdir(argv[1]):
            print("0" if argv[0] == "count" else "0 record(s) spooled (no spool yet)")
        elif argv[0] == "status":
            print(status(argv[1]))
        else:
            c = counts(argv[1])
            print(c["pending"])
            if c["unreadable"]:  # what they hold is unknown: not a count anyone should act on
                print(f"error: {c['unreadable']} job spool(s) in {argv[1]} cannot be read now", file=sys.stderr)
                return 1
        return 0
    if argv[0] == "serve":
        os.makedirs(argv[1], exist_ok=True)
        return forward(argv[1], idle_exit=None)
    return forward(argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
