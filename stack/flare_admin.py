"""Follow the FL system with the admin startup kit (runs in the `admin` container, FL network only).

    python3 stack/flare_admin.py status               server, registered clients, recent jobs
    python3 stack/flare_admin.py clients SITE ...     exit 0 when all named clients are registered
    python3 stack/flare_admin.py wait [JOB_ID]        wait for a job (default: the newest) to end
"""

import argparse
import contextlib
import json
import os
import sys
import time

KIT = os.environ.get("KIT", "/kit")
TERMINAL = ("FINISHED", "ABORTED", "FAILED")
COMPLETED = "FINISHED:COMPLETED"
END_REASON = "fedtrack_end_reason"  # set by the server on jobs it could not finish (job/outcome.py)


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
    print(f"server engine: {info.server_info.status}")
    print("clients: " + (", ".join(sorted(c.name for c in info.client_info)) or "none registered"))
    for job in jobs(sess)[: args.limit]:
        print(f"job {job['job_id']} {job.get('job_name', job.get('name', ''))} {job['status']}{reason(sess, job)}")
    return 0


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
    return wait_for(sess, args.job_id or all_jobs[0]["job_id"], args.timeout)


def wait_for(sess, job_id: str, timeout: float, kit: str = KIT) -> int:
    """Print the job's status as it changes until it ends; 0 only if it completed (else the reason).
    Rides out a server restart with new sessions (from `kit`), which it closes; `sess` stays the caller's."""
    own = [sess]
    try:
        return _wait(own, job_id, timeout, kit)
    finally:
        if own[0] is not sess:
            own[0].close()


def _wait(own: list, job_id: str, timeout: float, kit: str) -> int:
    sess = own[0]
    deadline = time.monotonic() + timeout
    last = lost = None
    while True:
        try:
            status = sess.get_job_status(job_id)
        except Exception as e:  # noqa: BLE001 - the server restarts or is down: wait for it, with a new session
            if not lost:
                print(f"lost the FL server ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}); waiting for it",
                      flush=True)
            lost = True
            status = None
            sess = own[0] = reconnect(sess, kit)
        else:
            lost = False
        if status and status != last:
            print(f"job {job_id} {status}", flush=True)
            last = status
        if status and status.startswith(TERMINAL):
            if status == COMPLETED:
                return 0
            print(f"error: job {job_id} did not complete: {status}{reason(sess, {'job_id': job_id, 'status': status})}",
                  file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            print(f"error: job {job_id} still {status or last} after {timeout:.0f} s", file=sys.stderr)
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("status")
    s.add_argument("--limit", type=int, default=5)
    s = sub.add_parser("clients")
    s.add_argument("sites", nargs="+")
    s = sub.add_parser("wait")
    s.add_argument("job_id", nargs="?")
    s.add_argument("--timeout", type=float, default=7200)
    args = p.parse_args()
    sess = session()
    try:
        return globals()[f"cmd_{args.cmd}"](sess, args)
    finally:
        sess.close()


if __name__ == "__main__":
    sys.exit(main())
