"""Follow the FL system with the admin startup kit (runs in the `admin` container, FL network only).

    fedtrack-admin status               the server, registered clients, recent jobs
    fedtrack-admin clients SITE ...     exit 0 when all named clients are registered
    fedtrack-admin wait [JOB_ID]        wait for a job (default: the newest) to end, showing
        [--progress lines|bar]          its round and elapsed time (`make wait` picks bar on a terminal)
"""

import argparse
import contextlib
import datetime
import json
import os
import sys
import time

from fedtrack.names import END_REASON  # set by the server on jobs it could not finish

KIT = os.environ.get("KIT", "/kit")
TERMINAL = ("FINISHED", "ABORTED", "FAILED")
COMPLETED = "FINISHED:COMPLETED"
PROGRESS = ("lines", "bar")
BAR_WIDTH = 20


def session(kit: str = KIT):
    from nvflare.fuel.flare_api.flare_api import new_secure_session

    with open(os.path.join(kit, "startup", "fed_admin.json")) as f:
        username = json.load(f)["admin"]["username"]
    with contextlib.redirect_stdout(sys.stderr):  # the API's progress chatter is not this command's output
        return new_secure_session(username, kit, timeout=30)


def jobs(sess) -> list:
    """Jobs, newest first."""
    return sorted(sess.list_jobs(detailed=True), key=lambda j: j.get("submit_time", 0), reverse=True)


def cmd_status(sess, args) -> int:
    info = sess.get_system_info()
    recent = jobs(sess)
    print(server_line([j for j in recent if j["status"] == "RUNNING"]))
    print("clients: " + (", ".join(sorted(c.name for c in info.client_info)) or "none registered"))
    for job in recent[: args.limit]:
        print(f"job {job['job_id']} {job.get('job_name', job.get('name', ''))} {job['status']}{reason(sess, job)}")
    return 0


def server_line(running: list) -> str:
    """What a user asks of the server (it answered, so it is up): is a job running? (nvflare's engine
    status says "stopped" whenever no job runs.)"""
    if not running:
        return "server: up, no job running"
    return "server: up, running job " + ", ".join(f"{j['job_id']} ({j.get('job_name', j.get('name', ''))})" for j in running)


def reason(sess, job: dict) -> str:
    """': <why>' for a job that ended without completing, when the server recorded why."""
    if job["status"] == COMPLETED or not job["status"].startswith(TERMINAL):
        return ""
    why = job.get(END_REASON) or sess.get_job_meta(job["job_id"]).get(END_REASON)
    return f": {why}" if why else ""


def registered(sess) -> set:
    return {c.name for c in sess.get_system_info().client_info}


def cmd_clients(sess, args) -> int:
    have = registered(sess)
    missing = sorted(set(args.sites) - have)
    print("registered: " + ", ".join(sorted(have)) + (f"; missing: {', '.join(missing)}" if missing else ""))
    return 1 if missing else 0


def active_job(sess, name: str):
    """The id of an unfinished job named `name`, or None."""
    for job in jobs(sess):
        if job.get("job_name", job.get("name")) == name and not job["status"].startswith(TERMINAL):
            return job["job_id"]
    return None


def cmd_wait(sess, args) -> int:
    all_jobs = jobs(sess)
    if not all_jobs:
        print("error: no job has been submitted; run `make up`", file=sys.stderr)
        return 2
    return wait_for(sess, args.job_id or all_jobs[0]["job_id"], args.timeout, progress=args.progress)


def job_round(sess, job_id: str):
    """(round, total) of a running job from the server's job stats, or None. Only the two round
    numbers are read: the keys nvflare's ScatterAndGather reports, and fedtrack.server.progress for FedAvg
    (nvflare 2.9's FedAvg reports no round there)."""
    try:
        stats = sess.show_stats(job_id, "server").get("server") or {}
    except Exception:  # noqa: BLE001 - the job is not running (yet, or any more): no round to show
        return None
    for group in stats.values():
        if isinstance(group, dict) and isinstance(group.get("current_round"), int) and isinstance(group.get("num_rounds"), int):
            total = group["num_rounds"]
            return min(group["current_round"] + 1, total), total  # 0-based; past the end once the last round is done
    return None


def started(sess, job_id: str):
    """When the server started the job (epoch seconds), or None before it has."""
    try:
        return datetime.datetime.fromisoformat(sess.get_job_meta(job_id)["start_time"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def clock(seconds: float) -> str:
    m, s = divmod(int(max(seconds, 0)), 60)  # max: the server's clock may run ahead of this host's
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class Progress:
    """What `wait` prints: a line per change of status or round, or (bar) the round on one line redrawn with \\r."""

    def __init__(self, job_id: str, mode: str):
        self.job_id, self.mode = job_id, mode
        self.status = self.round = None
        self.drawn = 0  # width of the bar now on screen (0: none)

    def say(self, line: str, file=sys.stdout):
        if self.drawn:
            print(flush=True)
            self.drawn = 0
        print(line, file=file, flush=True)

    def show(self, status: str, rnd, start):
        """rnd: (round, total), or None when the server says none now (not started, between rounds)."""
        elapsed = clock(time.time() - start) if start else None
        new_round = rnd is not None and rnd != self.round
        if status != self.status and not (new_round and self.mode == "lines"):
            self.say(f"job {self.job_id} {status}")
        self.status = status
        if new_round:
            self.round = rnd
            if self.mode == "lines":
                self.say(f"job {self.job_id} {status} round {rnd[0]}/{rnd[1]}" + (f", {elapsed} elapsed" if elapsed else ""))
        if self.mode == "bar" and self.round:
            self.bar(self.round[0] - 1, elapsed)

    def bar(self, done: int, elapsed):
        rnd, total = self.round
        fill = BAR_WIDTH * done // total
        text = f"[{'#' * fill}{'-' * (BAR_WIDTH - fill)}] round {rnd}/{total}" + (f"  {elapsed}" if elapsed else "")
        sys.stdout.write("\r" + text.ljust(self.drawn))
        sys.stdout.flush()
        self.drawn = len(text)

    def end(self, status: str, start):
        if self.drawn and status == COMPLETED:  # every round ran: the bar full
            self.bar(self.round[1], clock(time.time() - start) if start else None)
        self.say(f"job {self.job_id} {status}")


def wait_for(sess, job_id: str, timeout: float, kit: str = KIT, progress: str = "lines") -> int:
    """Print the job's status, round and elapsed time as they change until it ends; 0 only if it
    completed (else the reason). Rides out a server restart with new sessions (from `kit`), which it
    closes; `sess` stays the caller's."""
    own = [sess]
    try:
        return _wait(own, job_id, timeout, kit, Progress(job_id, progress))
    finally:
        if own[0] is not sess:
            own[0].close()


def _wait(own: list, job_id: str, timeout: float, kit: str, out: Progress) -> int:
    sess = own[0]
    deadline = time.monotonic() + timeout
    last = lost = start = None
    while True:
        try:
            status = sess.get_job_status(job_id)
            if status == "RUNNING" and not start:
                start = started(sess, job_id)
        except Exception as e:  # noqa: BLE001 - the server restarts or is down: wait for it, with a new session
            if not lost:
                out.say(f"lost the FL server ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}); waiting for it")
            lost = True
            status = None
            sess = own[0] = reconnect(sess, kit)
        else:
            lost = False
        if status and status.startswith(TERMINAL):
            out.end(status, start)
            if status == COMPLETED:
                return 0
            print(f"error: job {job_id} did not complete: {status}{reason(sess, {'job_id': job_id, 'status': status})}",
                  file=sys.stderr)
            return 1
        if status:
            # After the last round began there is nothing left to learn, and asking the job's process as it
            # winds down only logs errors at the server.
            ask = status == "RUNNING" and not (out.round and out.round[0] == out.round[1])
            out.show(status, job_round(sess, job_id) if ask else None, start)
            last = status
        if time.monotonic() > deadline:
            out.say(f"error: job {job_id} still {status or last} after {timeout:.0f} s", file=sys.stderr)
            return 1
        time.sleep(1)  # a status query is cheap; `make wait` ends within a second of the job


def reconnect(sess, kit: str):
    try:
        sess.close()
    except Exception:  # noqa: BLE001 - a broken session may fail to close; a new one replaces it
        pass
    try:
        return session(kit)
    except Exception:  # noqa: BLE001 - still down: the caller retries
        return sess


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("status")
    s.add_argument("--limit", type=int, default=5)
    s = sub.add_parser("clients")
    s.add_argument("sites", nargs="+")
    s = sub.add_parser("wait")
    s.add_argument("job_id", nargs="?")
    s.add_argument("--timeout", type=float, default=7200)
    s.add_argument("--progress", choices=PROGRESS, default="lines",
                   help="lines: a line per round; bar: one line redrawn (the caller knows whether its output is a terminal)")
    args = p.parse_args(argv)
    sess = session()
    try:
        return globals()[f"cmd_{args.cmd}"](sess, args)
    finally:
        sess.close()


if __name__ == "__main__":
    sys.exit(main())
