"""Build the FedAvg job with site-local MLflow tracking, then simulate, export or submit it.

    python job/job.py --site site-1=http://127.0.0.1:5001 --site site-2=http://127.0.0.1:5002 --env sim

Each site gets its own SiteMLflowReceiver, pointed at that site's own tracking URI and listening
only to local analytics events. The ConvertToFedEvent component that nvflare adds to every
client is removed, so no metric is ever forwarded to the FL server.

Exported and submitted jobs carry configuration only: the sites run the training script, receiver
and model from the code installed in their image (--site-code), and refuse jobs with custom code.
"""

import argparse
import logging
import os
import re
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_PROJECT = os.path.join(ROOT, "provision", "project.yml")
JOB_NAME = "fedavg-site-tracking"
# The training defaults, stated once: the CLI's and build_recipe's (the training script takes every
# one from the job; `make up` passes ROUNDS and DATASET from .env).
DEFAULTS = {"rounds": 5, "local_epochs": 2, "lr": 0.02, "batch_size": 32, "dataset": "digits", "data_dir": "data"}
FED_FORWARDER_ID = "event_to_fed"
# Where the FLARE image installs the vetted site code (client.py, tracking.py, ...: this folder).
SITE_CODE = "/opt/fedtrack/job"
# The modules of that code a job's configuration names; they are never shipped with the job.
SITE_MODULES = ["client", "data", "model", "outcome", "privacy", "spool", "tracking"]

log = logging.getLogger("fedtrack.job")


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


# ---------------------------------------------------------------- input checks


def project_sites(project_file: str) -> list:
    import yaml

    try:
        with open(project_file) as f:
            project = yaml.safe_load(f)
    except OSError as e:
        raise UsageError(f"cannot read the project file {project_file}: {e.strerror}")
    return [p["name"] for p in project.get("participants", []) if p.get("type") == "client"]


def check_tracking_uri(site: str, uri: str) -> str:
    parsed = urllib.parse.urlsplit(uri)
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if parsed.scheme not in ("http", "https") or not parsed.hostname or port == -1 or parsed.query or parsed.fragment:
        raise UsageError(
            f"site {site}: {uri!r} is not an http(s) tracking URI; use --site {site}=http://HOST:PORT "
            f"(the address of {site}'s own MLflow server)"
        )
    return uri.rstrip("/")


def parse_sites(specs: list, known: list) -> dict:
    """['site-1=http://h:1', ...] -> {'site-1': 'http://h:1', ...}, or a UsageError naming the fix."""
    if not specs:
        raise UsageError(f"no site given; use --site NAME=http://HOST:PORT for each of {', '.join(known)}")
    sites = {}
    for spec in specs:
        name, sep, uri = spec.partition("=")
        name = name.strip()
        if name not in known:
            raise UsageError(f"unknown site {name!r}; the project's sites are {', '.join(known)}")
        if name in sites:
            raise UsageError(f"site {name} is given twice; give each site once")
        if not sep or not uri.strip():
            raise UsageError(f"site {name} has no tracking URI; use --site {name}=http://HOST:PORT")
        sites[name] = check_tracking_uri(name, uri.strip())
    return sites


def check_admin_kit(kit: str, username: str = None) -> str:
    """The admin user name of a startup kit, or a UsageError saying what to fix."""
    import json

    if not kit:
        raise UsageError("--env prod needs --startup-kit DIR, the admin's startup kit (run `make provision`)")
    fed_admin = os.path.join(kit, "startup", "fed_admin.json")
    if not os.path.isdir(kit):
        raise UsageError(f"startup kit not found at {kit}; run `make provision`")
    if not os.path.isfile(fed_admin):
        raise UsageError(f"{kit} is not an admin startup kit (no startup/fed_admin.json); use the admin's kit")
    with open(fed_admin) as f:
        admin = json.load(f).get("admin", {})
    for key in ("client_cert", "client_key", "ca_cert"):
        path = os.path.join(kit, "startup", admin.get(key, f"<{key} missing>"))
        if not os.path.isfile(path):
            raise UsageError(f"admin startup kit {kit} lacks {os.path.basename(path)}; provision it again")
    kit_user = admin.get("username")
    if username and kit_user and username != kit_user:
        raise UsageError(f"startup kit {kit} belongs to {kit_user}, not {username}")
    return username or kit_user


# ---------------------------------------------------------------- the job


def build_recipe(
    sites: dict,
    rounds: int = DEFAULTS["rounds"],
    dataset: str = DEFAULTS["dataset"],
    data_dir: str = DEFAULTS["data_dir"],
    local_epochs: int = DEFAULTS["local_epochs"],
    lr: float = DEFAULTS["lr"],
    batch_size: int = DEFAULTS["batch_size"],
    name: str = JOB_NAME,
    spool_limit: int = None,
    torch_threads: int = 0,
    site_code: str = None,
):
    """The FedAvg recipe, one SiteMLflowReceiver per site, and no metric forwarding to the server.

    With site_code, the job runs the sites' installed code from that folder and ships none; without
    it (the simulator on this host), the training script travels with the job."""
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
    from nvflare.recipe.utils import add_experiment_tracking, set_per_site_config

    from model import SimpleNetwork
    from outcome import RunOutcome
    from privacy import MetricLeakGuard

    site_names = list(sites)
    recipe = FedAvgRecipe(
        name=name,
        model=SimpleNetwork(),
        min_clients=len(sites),
        num_rounds=rounds,
        # Relative: shipped inside the job (simulator); absolute: the copy installed at each site.
        train_script=os.path.join(site_code, "client.py") if site_code else "client.py",
        launch_external_process=False,  # in-process: the site's receiver sees the local events
        key_metric="",  # clients report no metric to the server, so there is none to select a model by
    )
    set_per_site_config(
        recipe,
        {
            site: {
                "train_args": f"--dataset {dataset} --data-dir {data_dir} --local-epochs {local_epochs} "
                f"--lr {lr} --batch-size {batch_size} --site-index {i} --num-sites {len(sites)}"
                + (f" --torch-threads {torch_threads}" if torch_threads else "")
            }
            for i, site in enumerate(site_names)
        },
    )
    for site, uri in sites.items():
        add_experiment_tracking(
            recipe,
            "mlflow",
            {"tracking_uri": uri, "kw_args": {"experiment_name": f"{name}-{site}"}},
            client_side=True,
            server_side=False,
            clients=[site],
        )
    _use_site_receivers(recipe, sites, name, spool_limit)
    _remove_fed_forwarding(recipe)
    recipe._job.to_server(MetricLeakGuard(), id="metric_leak_guard")
    recipe._job.to_server(RunOutcome(), id="run_outcome")  # each site's run ends with the job's real outcome
    if site_code:
        _ship_no_code(recipe)
    return recipe


# nvflare's recipe API has no public way to list a job's apps or to leave the training script out
# of it: these two helpers are the only places that reach into the recipe's FedJob.
def _client_apps(recipe) -> dict:
    return {t: app for t, app in recipe._job._deploy_map.items() if t != "server"}


def _ship_no_code(recipe):
    """Config only: the sites' own modules stay out of custom/, and so does the training script."""
    recipe._job.set_app_packages(SITE_MODULES)
    for app in _client_apps(recipe).values():
        app.app_config.ext_scripts.clear()


def _use_site_receivers(recipe, sites: dict, name: str, spool_limit: int = None):
    """Swap each site's stock receiver for the site-local one (same id, same events, same URI)."""
    from spool import DEFAULT_MAX_RECORDS
    from tracking import SiteMLflowReceiver

    for site, app in _client_apps(recipe).items():
        comps = app.app_config.components
        stock = comps["client_receiver"]
        comps["client_receiver"] = SiteMLflowReceiver(
            site=site,
            tracking_uri=sites[site],
            experiment_name=stock.kw_args["experiment_name"],
            run_name=name,
            events=stock.events,
            max_spooled_records=spool_limit or DEFAULT_MAX_RECORDS,
        )


def _remove_fed_forwarding(recipe):
    """Drop the ConvertToFedEvent widget that would forward every metric to the FL server."""
    for app in _client_apps(recipe).values():
        app.app_config.components.pop(FED_FORWARDER_ID, None)


def custom_code(job_dir: str) -> list:
    """Files an exported job would ship as code (should be []: sites refuse custom code)."""
    return sorted(
        os.path.relpath(os.path.join(d, f), job_dir)
        for d, _, files in os.walk(job_dir)
        for f in files
        if os.path.relpath(d, job_dir).split(os.sep)[1:2] == ["custom"]
    )


def check_config_only(job_dir: str):
    leaks = forwarding_components(job_dir)
    if leaks:
        raise RuntimeError(f"exported job would forward metrics to the server: {leaks}")
    code = custom_code(job_dir)
    if code:
        raise RuntimeError(f"exported job would carry custom code, which every site refuses: {code}")


def forwarding_components(job_dir: str) -> list:
    """Client components in an exported job that would send analytics to the server (should be [])."""
    import glob
    import json

    found = []
    for cfg in glob.glob(os.path.join(job_dir, "*", "config", "config_fed_client.json")):
        with open(cfg) as f:
            client = json.load(f)
        for comp in client.get("components", []):
            path = comp.get("path", "")
            args = comp.get("args", {})
            events = args.get("events_to_convert", []) + [e for e in args.get("events", []) if e.startswith("fed.")]
            if path.endswith("ConvertToFedEvent") or events:
                found.append(f"{os.path.relpath(cfg, job_dir)}: {comp.get('id')} ({path})")
        for executor in client.get("executors", []):
            args = executor.get("executor", {}).get("args", {})
            if args.get("launch_external_process") or args.get("execution_mode", "in_process") != "in_process":
                found.append(f"{os.path.relpath(cfg, job_dir)}: external process (fires fed events directly)")
    return found


# ---------------------------------------------------------------- environments


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
        sys.path.insert(0, os.path.join(ROOT, "scripts"))  # the one wait loop: `make wait`'s (scripts/ beside job/ in the image too)
        from flare_admin import wait_for

        return wait_for(sess, job_id, timeout, kit)
    finally:
        sess.close()


# ---------------------------------------------------------------- CLI


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--site", action="append", default=[], metavar="NAME=URI", help="a site and its own MLflow URI")
    p.add_argument("--name", default=JOB_NAME, help="job name; each site's experiment is NAME-SITE")
    p.add_argument("--rounds", type=int, default=DEFAULTS["rounds"])
    p.add_argument("--local-epochs", type=int, default=DEFAULTS["local_epochs"])
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--dataset", choices=("digits", "cifar10"), default=DEFAULTS["dataset"])
    p.add_argument("--data-dir", default=DEFAULTS["data_dir"], help="where each site finds CIFAR-10: a path at the site (sim: on this host)")
    p.add_argument("--spool-limit", type=int, default=None,
                   help="most undelivered tracking records a site keeps (default 1,000,000)")
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch CPU threads per site (sim default: this host's cores shared by the sites; else torch's own)")
    p.add_argument("--env", choices=("sim", "export", "prod"), default="sim")
    p.add_argument("--site-code", default=SITE_CODE,
                   help="export/prod: the folder at each site holding the vetted site code (the image's by default)")
    p.add_argument("--startup-kit", help="admin startup kit (prod)")
    p.add_argument("--username", help="admin user (prod; default: the kit's)")
    p.add_argument("--export-dir", default="jobs", help="where --env export writes the job folder")
    p.add_argument("--workspace", default="/tmp/nvflare/simulation", help="simulator workspace root (sim)")
    p.add_argument("--project", default=DEFAULT_PROJECT, help="project.yml that names the sites")
    p.add_argument("--no-wait", action="store_true", help="prod: return once the job is submitted")
    p.add_argument("--timeout", type=float, default=3600, help="prod: seconds to wait for the job")
    return p.parse_args(argv)


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        for flag, value in (("--rounds", args.rounds), ("--local-epochs", args.local_epochs), ("--batch-size", args.batch_size)):
            if value < 1:
                raise UsageError(f"{flag} must be at least 1")
        if args.spool_limit is not None and args.spool_limit < 1:
            raise UsageError("--spool-limit must be at least 1")
        if not args.lr > 0:
            raise UsageError("--lr must be positive")
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", args.name):
            raise UsageError(f"job name {args.name!r}: use lowercase letters, digits, '-' and '_'")
        sites = parse_sites(args.site, project_sites(args.project))
        if args.env == "sim":
            from data import DataMissingError, require_cifar10
            from tracking import probe_tracking_server

            if args.dataset == "cifar10":  # the simulated sites read their data on this host
                try:
                    args.data_dir = os.path.abspath(args.data_dir)
                    require_cifar10(args.data_dir)
                except DataMissingError as e:
                    raise UsageError(str(e))
            # The simulator runs every site on this host, so this host may look at each site's server.
            # (In prod the submitter must not reach a site's MLflow.) A server that is down is no
            # reason to stop: each site spools its records and delivers them when it answers.
            for site, uri in sites.items():
                problem = probe_tracking_server(uri)
                if problem:
                    print(
                        f"warning: site {site}: tracking server {uri} does not answer ({problem}); "
                        f"its records are spooled and delivered when it does",
                        file=sys.stderr,
                    )
        if not os.path.isabs(args.site_code):
            raise UsageError(f"--site-code {args.site_code!r}: give the absolute path of the site code at each site")
        username = check_admin_kit(args.startup_kit, args.username) if args.env == "prod" else None
        export_dir = os.path.abspath(args.export_dir)
        workspace = os.path.abspath(args.workspace)
        kit = os.path.abspath(args.startup_kit) if args.startup_kit else None
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    torch_threads = args.torch_threads
    if torch_threads is None:  # simulated sites share this host's cores
        torch_threads = max(1, (os.cpu_count() or 1) // len(sites)) if args.env == "sim" else 0
    # nvflare reads --export/--export-dir from sys.argv on import; this CLI has already parsed them.
    sys.argv = sys.argv[:1]
    # Relative paths (train_script, custom code) resolve against job/, so nothing host-specific ships.
    os.chdir(HERE)
    sys.path.insert(0, HERE)
    recipe = build_recipe(
        sites, args.rounds, args.dataset, args.data_dir, args.local_epochs, args.lr, args.batch_size, args.name,
        args.spool_limit, torch_threads, None if args.env == "sim" else args.site_code,
    )
    try:
        if args.env == "sim":
            return run_sim(recipe, sites, workspace)
        if args.env == "export":
            return run_export(recipe, export_dir)
        return run_prod(recipe, kit, username, not args.no_wait, args.timeout)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
