"""Where the built job goes: the simulator on this host, an exported folder, or the FL system (prod)."""

import logging
import os
import sys
import time

from audit import check_config_only
from inputs import ROOT, UsageError

log = logging.getLogger("fedtrack.job")


def run_sim(recipe, sites: dict, workspace: str) -> int:
    from nvflare.recipe.sim_env import SimEnv

    env = SimEnv(clients=list(sites), num_threads=len(sites), workspace_root=workspace)
    run = recipe.run(env)
    result = run.get_result()
    log.info("simulation finished; workspace %s", result)
    print(f"job {run.get_job_id()} FINISHED; workspace {result}")
    report_delivery({site: os.path.join(workspace, recipe.name, site, "tracking-spool") for site in sites}, sites)
    return 0


def report_delivery(spools: dict, sites: dict, settle: float = 10.0):
    """After a simulation: per site, what is still undelivered, and the forwarder that keeps at it."""
    from spool import counts, forwarder_pid

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
              f"see `python3 job/spool.py status {spool_dir}`")


def run_export(recipe, export_dir: str) -> int:
    recipe.export(export_dir)
    job_dir = os.path.join(export_dir, recipe.name)
    check_config_only(job_dir)
    print(f"job exported to {job_dir}")
    return 0


def run_prod(recipe, kit: str, username: str, wait: bool, timeout: float) -> int:
    """Export, check that the job is config only, submit it with the admin kit, and maybe wait."""
    import contextlib
    import tempfile

    from nvflare.fuel.flare_api.flare_api import new_secure_session

    with tempfile.TemporaryDirectory() as tmp:
        recipe.export(tmp)
        job_dir = os.path.join(tmp, recipe.name)
        check_config_only(job_dir)
        sess = None
        try:
            with contextlib.redirect_stdout(sys.stderr):  # the API's progress chatter
                sess = new_secure_session(username, kit, timeout=30)
            job_id = sess.submit_job(job_dir)
        except Exception as e:  # the Flare API's reason, on one line
            if sess:
                sess.close()  # its threads would keep this process alive
            raise UsageError(f"could not submit the job with the admin kit {kit}: {e}".replace("\n", " "))
    print(f"submitted job {job_id}", flush=True)
    try:
        if not wait:
            return 0
        sys.path.insert(0, os.path.join(ROOT, "stack"))  # the one wait loop: `make wait`'s (stack/ beside job/ in the image too)
        from flare_admin import wait_for

        return wait_for(sess, job_id, timeout, kit)
    finally:
        sess.close()
