"""The spool without a server: a full spool, a killed or failing writer, a forwarder looking mid-set-up
or losing its folder. Each on real files and real processes; no MLflow server, no Docker."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time

from fedtrack.spool import store
from fedtrack.spool.delivery import Delivery
from fedtrack.spool.report import status
from support import SITES, free_port, new_spool, wait_until


def test_a_full_spool_refuses_new_records_keeps_the_old_and_says_so(tmp_path, caplog):
    w = new_spool(tmp_path, "http://127.0.0.1:1", "full", max_records=10)
    with caplog.at_level(logging.WARNING, logger="fedtrack.spool"):
        for i in range(15):
            w.append("metric", "m", float(i), i)
        w.commit()
    assert (w.refused, w.failed) == (5, 0)
    assert any("is full (10 undelivered records, limit 10)" in r.getMessage() for r in caplog.records)
    w.close()  # the final status still goes in
    assert status(str(tmp_path / "spool")) == ("11 record(s) spooled and undelivered in 1 job spool(s), 5 refused "
                                               "(spool full), 0 lost (spool write failed)")
    d = Delivery(w.path)
    try:
        kept = [json.loads(v) for (v,) in d.db.execute("SELECT value FROM records WHERE kind = 'metric' ORDER BY seq")]
    finally:
        d.close()
    assert kept == [float(i) for i in range(10)], "the spool must keep the oldest records and refuse the newest"


def test_a_forwarder_looking_while_a_job_sets_up_its_spool_leaves_the_run_open(tmp_path, monkeypatch):
    """A forwarder may look at a spool between any two statements of its writer's set-up: it must find it
    not set up yet, or set up by its live writer; never a spool whose writer seems gone, which it would
    end FAILED and delete under the running job (seen once in CI: a site's run FAILED 40 ms after it began)."""
    from fedtrack.spool import writer

    connect, looks = writer.connect, []
    forwarder = {}

    def look(sql):  # the writer is about to run sql: the forwarder looks now (while there is nothing to send)
        d = forwarder.setdefault("d", Delivery(forwarder["path"]))
        if not d.db.execute("SELECT 1 FROM records").fetchone():
            looks.append((sql, d.step(), store.read_meta(d.db).get("closed"),
                          d.db.execute("SELECT kind, value FROM records").fetchall()))

    def traced(path):
        db = connect(path)
        if not forwarder:  # the writer's connection
            forwarder["path"] = path
            db.set_trace_callback(look)
        return db

    monkeypatch.setattr(writer, "connect", traced)  # the writer's connections only
    w = new_spool(tmp_path, "http://127.0.0.1:1", "setup")
    w.append("metric", "m", 1.0, 0)
    w.close()
    assert any("INSERT OR REPLACE INTO meta" in sql for sql, *_ in looks), looks
    for sql, done, closed, records in looks:
        assert not done and ("end", "FAILED") not in records, (sql, closed, records)
    d = forwarder["d"]
    assert d.db.execute("SELECT kind, value FROM records ORDER BY seq").fetchall() == [("metric", "1.0"), ("end", "FINISHED")]
    # Closed in the final status's own commit: once its writer is gone, nothing adds FAILED after FINISHED.
    assert [sql for sql, *_ in looks if "'closed', '1'" in sql] and store.read_meta(d.db)["closed"] == "1"
    d.close()


KILLED_WRITER = """
import sys, time
from fedtrack.spool.writer import SpoolWriter

w = SpoolWriter(sys.argv[1], "killed", {"tracking_uri": "http://127.0.0.1:1", "experiment_name": "e", "site": sys.argv[2],
                                        "job_id": "killed", "run_name": "r", "created_ms": 0})
print("logging", flush=True)
i = 0
while True:  # a training loop logging a metric every millisecond, until it is killed
    w.append("metric", "m", float(i), i)
    i += 1
    time.sleep(0.001)
"""


def test_a_killed_training_process_loses_only_its_last_moments(tmp_path):
    """Group commits: SIGKILL can lose only what was logged since the last commit (COMMIT_INTERVAL,
    50 ms); what is spooled has no gap. The bound checked is far above that, to detect a stall."""
    spool_dir = str(tmp_path / "spool")
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, spool_dir, SITES[0]],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "logging"
        time.sleep(2)
    finally:
        killed_ms = time.time() * 1000
        child.kill()
        child.wait(10)
    d = Delivery(os.path.join(spool_dir, "killed.spool"))
    try:
        rows = d.db.execute("SELECT step, ts FROM records WHERE kind = 'metric' ORDER BY seq").fetchall()
    finally:
        d.close()
    steps = [s for s, _ in rows]
    lost_ms = killed_ms - rows[-1][1]
    print(f"\n{len(rows)} records spooled; the newest was logged {lost_ms:.0f} ms before the kill")
    assert steps == list(range(len(steps))) and len(steps) > 100, "a gap in what was spooled"
    assert lost_ms < 1000, f"the newest spooled record is {lost_ms:.0f} ms older than the kill: commits stalled"


FULL_DISK = """
import json, os, resource, signal, sys, time
from fedtrack.spool.report import counts, status
from fedtrack.spool.writer import SpoolWriter

spool_dir = sys.argv[1]
w = SpoolWriter(spool_dir, "disk-full", {"tracking_uri": "http://127.0.0.1:1", "experiment_name": "e", "site": sys.argv[2],
                                         "job_id": "disk-full", "run_name": "r", "created_ms": 0})
for i in range(100):
    w.append("metric", "m", float(i), i)
w.commit()
# The storage refuses to grow any file past its size now: writes fail as on a full disk (EFBIG, not a signal).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (max(os.path.getsize(w.path + s) for s in ("", "-wal")), hard))
for i in range(100, 3000):
    w.append("metric", "m", float(i), i)
    if i % 10 == 0:
        w.commit()
w.commit()
failing = status(spool_dir)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space returns
time.sleep(1.1)
failed = w.failed
w.append("metric", "m", 9999.0, 9999)
w.commit()
after = w.failed == failed
w.close()
print(json.dumps({"failed": w.failed, "failing": failing, "after": after, "counts": counts(spool_dir),
                  "status": status(spool_dir)}))
"""


def test_a_failed_spool_write_is_counted_keeps_the_rest_and_resumes(tmp_path):
    """The spool's files may not grow (RLIMIT_FSIZE, in a child process): SQLite's "disk is full".
    The failed records are counted, shown by `status` while it lasts, and spooling resumes."""
    spool_dir = str(tmp_path / "spool")
    child = subprocess.run([sys.executable, "-c", FULL_DISK, spool_dir, SITES[0]],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    r = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"\n{r['failed']} of 2900 writes failed while the spool's files could not grow; then it resumed")
    assert r["failed"] > 0, r
    assert re.search(r"[1-9]\d* lost \(spool write failed\); spool writes are FAILING now", r["failing"]), r["failing"]
    assert r["after"], "spooling did not resume once space returned"
    c = r["counts"]
    assert c["pending"] == 3000 - r["failed"] + 2, c  # every record not counted lost, the one after recovery, the final status
    assert c["failed"] == r["failed"] and c["failing"] is None, c
    assert "FAILING" not in r["status"] and f"{r['failed']} lost" in r["status"], r["status"]


def test_a_forwarder_stops_within_a_second_of_its_spool_folder_being_removed(tmp_path):
    """Even in a 5 s backoff from a server that is down, with undelivered records: it looks at its
    folder every POLL (0.2 s), not once per backoff. Its exit after that is Python's teardown."""
    spool_dir = str(tmp_path / "spool")
    w = new_spool(tmp_path, f"http://127.0.0.1:{free_port()}", "orphan")
    w.append("metric", "m", 1.0, 0)
    w.close()
    fwd = subprocess.Popen([sys.executable, "-m", "fedtrack.spool.cli", "forward", spool_dir],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []  # (when it arrived here, the forwarder's log line): its stop is timed from this side

    def read():
        for line in fwd.stdout:
            lines.append((time.monotonic(), line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: any("delivery failed" in line for _, line in lines), 60, "its first failed delivery", 0.05)
        time.sleep(4)  # it failed at 0, 0.5, 1.5 and 3.5 s: its next try is about 4.5 s away
        assert fwd.poll() is None
        t0 = time.monotonic()
        shutil.rmtree(spool_dir)
        fwd.wait(timeout=60)  # a stall detector; the bound is on its stop, below
        reader.join(10)
        out = "".join(line for _, line in lines)
        gone = [t for t, line in lines if "is gone" in line]
        assert fwd.returncode == 0 and gone, out[-2000:]
        print(f"\nthe forwarder stopped {gone[0] - t0:.2f} s and exited {time.monotonic() - t0:.2f} s "
              f"after its spool folder was removed")
        assert gone[0] - t0 < 1.0, f"it stopped {gone[0] - t0:.2f} s after its folder was removed:\n{out[-2000:]}"
    finally:
        if fwd.poll() is None:
            fwd.kill()
