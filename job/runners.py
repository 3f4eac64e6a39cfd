"""Where the built job goes: the simulator on this host, an exported folder, or the FL system (prod)."""

import logging
import os
import sys
import time

from fedtrack.job.audit import check_config_only
from fedtrack.job.inputs import UsageError
from fedtrack import names

log = logging.getLogger("fedtrack.job")


def run_sim(recipe, sites: dict, workspace: str) -> int:
    from nvflare.recipe.sim_env import SimEnv

    from fedtrack.policy.install import install_for_simulator

    install_for_simulator(os.path.join(workspace, recipe.name))  # the sites' allow list here too
    env = SimEnv(clients=list(sites), num_threads=len(sites), workspace_root=workspace)
    run = recipe.run(env)
    result = run.get_result()
    log.info("simulation finished; workspace %s", result)
    print(f"job {run.get_job_id()} FINISHED; workspace {result}")
    report_delivery({site: names.spool_dir(os.path.join(workspace, recipe.name, site)) for site in sites}, sites)
    return 0


def report_delivery(spools: dict, sites: dict, settle: float = 10.0):
    """After a simulation: per site, what is still undelivered, and the forwarder that keeps at it."""
    from fedtrack.spool.forwarder import forwarder_pid
    from fedtrack.spool.report import counts

    deadline = time.monotonic() + settle  # a server that answers takes the rest within seconds
    while time.monotonic() < deadline and any(os.path.isdir(d) and counts(d)["pending"] for d in spools.values()):
        time.sleep(0.5)
    for site, spool_dir in spools.items():
        pending = counts(spool_dir)["pending"] if os.path.isdir(spool_dir) else 0
        if not pending:
            print(f"{site}: every record delivered to {sites[site]}")
            continue
        pid = forwarder_pid(spool_dir)
        where = (f"forwarder pid {pid} keeps delivering them in the background (log: {spool_dir}/forwarder.log; "
                 f"stop it with `kill {pid}`: the records stay spooled for the next run's forwarder)"
                 if pid else "no forwarder runs now: the next run at this site delivers them")
        print(f"{site}: {pending} record(s) not yet delivered to {sites[site]}; {where}; "
              f"see `fedtrack-spool status {spool_dir}`")


def run_export(recipe, export_dir: str) -> int:
    recipe.export(export_dir)
    job_dir = os.path.join(export_dir, recipe.name)
    check_config_only(job_dir)
    print(f"job exported to {job_dir}")
    return 0


def open_session(kit: str, username: str, sites: list, ready_timeout: float = 0.0):
    """Start opening the admin session in a thread (it overlaps building the job); the future's result
    is the session. With ready_timeout: wait that long for the server to answer and every site to register."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(1, thread_name_prefix="admin-session")
    future = pool.submit(_session, kit, username, sites, ready_timeout)
    pool.shutdown(wait=False)
    return future


def _session(kit: str, username: str, sites: list, ready_timeout: float):
    import contextlib

    from nvflare.fuel.flare_api.flare_api import new_secure_session

    from fedtrack.admin import registered

    deadline = time.monotonic() + ready_timeout
    sess, missing = None, sites
    try:
        while True:
            try:
                if sess is None:
                    with contextlib.redirect_stdout(sys.stderr):  # the API's progress chatter
                        sess = new_secure_session(username, kit, timeout=max(5.0, min(30.0, deadline - time.monotonic())))
                missing = sorted(set(sites) - registered(sess)) if ready_timeout else []
            except Exception as e:  # noqa: BLE001 - the Flare API's reason, on one line
                if time.monotonic() > deadline:
                    raise UsageError(f"could not reach the FL server with the admin kit {kit}: {e}".replace("\n", " "))
            if sess is not None and not missing:
                return sess
            if time.monotonic() > deadline:
                raise UsageError(f"site(s) {', '.join(missing)} not registered with the FL server after "
                                 f"{ready_timeout:.0f} s: see `make status` and `make logs`")
            time.sleep(0.5)
    except BaseException:
        if sess is not None:
            sess.close()
        raise


def run_prod(recipe, session, wait: bool, timeout: float, kit: str, once: bool = False) -> int:
    """Export, check that the job is config only, submit it with the admin session (a future from
    open_session), and maybe wait. once: submit nothing while a job of this name is unfinished."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            recipe.export(tmp)
            job_dir = os.path.join(tmp, recipe.name)
            check_config_only(job_dir)
            sess = session.result()
            from fedtrack.admin import active_job, wait_for  # the one wait loop

            running = active_job(sess, recipe.name) if once else None
            if running:
                print(f"running job {running}", flush=True)
                return 0
            try:
                job_id = sess.submit_job(job_dir)
            except Exception as e:  # the Flare API's reason, on one line
                raise UsageError(f"could not submit the job with the admin kit {kit}: {e}".replace("\n", " "))
        print(f"submitted job {job_id}", flush=True)
        return wait_for(sess, job_id, timeout, kit) if wait else 0
    finally:
        session.add_done_callback(_close)  # now, or once it opens: its threads would keep this process alive


def _close(future):
    if not future.cancelled() and future.exception() is None:
        future.result().close()
