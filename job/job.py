"""Build the FedAvg job with site-local MLflow tracking, then simulate, export or submit it.

    fedtrack-job --site SITE=http://127.0.0.1:PORT ... --env sim      (or: python job/job.py ...)

The sites are the clients of provision/project.yml (--project); each one's tracking URI is the
project's (its own MLflow service by default) unless --site NAME=URI names the sites and URIs. Each site gets its own SiteMLflowReceiver, pointed at that site's own tracking URI and listening
only to local analytics events. The ConvertToFedEvent component that nvflare adds to every
client is removed, so no metric is ever forwarded to the FL server.

A job carries configuration only: typed training settings for each site's own trainer
(fedtrack.site.trainer) and a run name for its receiver. Each site runs the code installed in its
image and decides where its data is and where its metrics go; it refuses any other job at deploy
(fedtrack.policy.validator). Only the simulator, where this host is every site, takes the sites'
settings (--data-dir, --spool-limit, --system-metrics-interval) from here.
"""

import argparse
import logging
import os
import sys

from fedtrack.job.inputs import DEFAULT_PROJECT, UsageError, check_admin_kit, parse_sites, probe_tracking_server, project_sites
from fedtrack.job.recipe import build_recipe
from fedtrack.knobs import DEFAULTS, JOB_NAME, JOB_ONLY, KNOBS, SITE, KnobError, knob
from fedtrack.site import settings
from fedtrack.job.runners import open_session, run_export, run_prod, run_sim

HERE = os.path.dirname(os.path.abspath(__file__))
# flag: (the site's variable, what it sets); fedtrack.site.settings reads the variable at each site.
SITE_FLAGS = {
    "--data-dir": (settings.DATA_DIR_ENV, "where each site finds CIFAR-10 (default: ./data)"),
    "--spool-limit": (settings.SPOOL_LIMIT_ENV, "most undelivered tracking records a site keeps (default 1,000,000)"),
    "--system-metrics-interval": (settings.SYSTEM_METRICS_ENV,
                                  "seconds between samples of each site's CPU, memory and GPUs (0: none; default 10)"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--site", action="append", default=[], metavar="NAME=URI", help="a site and its own MLflow URI (default: every site of the project, with the project's URIs)")
    p.add_argument("--name", default=JOB_NAME, help="job name; each site's experiment is NAME-SITE")
    # The knobs' values are read as text and checked by fedtrack.knobs after parsing (the same bounds and
    # one-line errors as `make check`).
    p.add_argument("--rounds", default=str(DEFAULTS["rounds"]))
    p.add_argument("--local-epochs", default=str(DEFAULTS["local_epochs"]))
    p.add_argument("--lr", default=str(DEFAULTS["lr"]))
    p.add_argument("--batch-size", default=str(DEFAULTS["batch_size"]))
    p.add_argument("--dataset", default=DEFAULTS["dataset"], help="digits (bundled) or cifar10")
    # Each site's own settings: given here only to the simulator, which plays every site on this host.
    for flag, (var, what) in SITE_FLAGS.items():
        p.add_argument(flag, default=None, help=f"sim only: {what} (a deployed site sets {var})")
    p.add_argument("--lost-after", default=str(DEFAULTS["lost_after"]),
                   help="seconds a site's job process may stay silent before the job fails (tests shorten it)")
    p.add_argument("--register-model", default="", metavar="NAME",
                   help="also register each site's final model in its own MLflow model registry under NAME")
    p.add_argument("--torch-threads", default=None,
                   help="torch CPU threads per site (sim default: this host's cores shared by the sites; else torch's own)")
    p.add_argument("--env", choices=("sim", "export", "prod"), default="sim")
    p.add_argument("--startup-kit", help="admin startup kit (prod)")
    p.add_argument("--username", help="admin user (prod; default: the kit's)")
    p.add_argument("--export-dir", default="jobs", help="where --env export writes the job folder")
    p.add_argument("--workspace", default="/tmp/nvflare/simulation", help="simulator workspace root (sim)")
    p.add_argument("--project", default=DEFAULT_PROJECT, help="project.yml that names the sites")
    p.add_argument("--no-wait", action="store_true", help="prod: return once the job is submitted")
    p.add_argument("--timeout", type=float, default=3600, help="prod: seconds to wait for the job")
    p.add_argument("--ready-timeout", type=float, default=0.0,
                   help="prod: first wait up to this many seconds for the server and every site of the job")
    p.add_argument("--once", action="store_true",
                   help="prod: submit nothing while a job of this name is unfinished (prints `running job ID`)")
    return p.parse_args(argv)


def check_knobs(args):
    """Each knob given (or defaulted) as fedtrack.knobs checks it, into its typed value on args."""
    for name in (k.name for k in (*KNOBS.values(), *JOB_ONLY.values())):
        text = getattr(args, name, None)
        if text is None or (name == "register_model" and not text):
            continue
        try:
            setattr(args, name, knob(name).check(text, "--" + name.replace("_", "-")))
        except KnobError as e:
            raise UsageError(str(e)) from None


def site_settings(args) -> dict:
    """The simulated sites' settings as their variables ({} but for sim); a UsageError for one given to a
    deployed site's job, which each site sets for itself."""
    given = {flag: getattr(args, flag[2:].replace("-", "_")) for flag in SITE_FLAGS}
    if args.env != "sim":
        for flag, value in given.items():
            if value is not None:
                var = SITE_FLAGS[flag][0]
                raise UsageError(f"{flag} is each site's own setting, not the job's: set {var} at the site "
                                 f"({var[len(settings.PREFIX):]} in .env for this stack)")
        return {}
    env = {settings.DATA_DIR_ENV: os.path.abspath(given["--data-dir"] or DEFAULTS["data_dir"])}
    for flag in ("--spool-limit", "--system-metrics-interval"):
        var = SITE_FLAGS[flag][0]
        if given[flag] is not None:
            try:
                env[var] = str(SITE[var[len(settings.PREFIX):]].check(given[flag], flag))
            except KnobError as e:
                raise UsageError(str(e)) from None
    return env


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        check_knobs(args)
        sites = parse_sites(args.site, project_sites(args.project))
        site_env = site_settings(args)
        if args.env == "sim":
            from fedtrack.job.data import DataMissingError, require_cifar10

            if args.dataset == "cifar10":  # the simulated sites read their data on this host
                try:
                    require_cifar10(site_env[settings.DATA_DIR_ENV])
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
    # Prod: the admin session opens (and waits for the sites) while the job is built.
    session = open_session(kit, username, list(sites), args.ready_timeout) if args.env == "prod" else None
    os.environ.update(site_env)  # sim: the simulated sites' own settings (its sites run in this process tree)
    recipe = build_recipe(
        sites, args.rounds, args.dataset, args.local_epochs, args.lr, args.batch_size, args.name, torch_threads,
        args.register_model, args.lost_after, sim=args.env == "sim",
    )
    try:
        if args.env == "sim":
            return run_sim(recipe, sites, workspace)
        if args.env == "export":
            return run_export(recipe, export_dir)
        print(f"job plan: {args.name}, {args.rounds} rounds, {args.dataset}, lr {args.lr}, {args.local_epochs} local "
              f"epoch(s), batch {args.batch_size}, sites {' '.join(sites)}", flush=True)
        return run_prod(recipe, session, not args.no_wait, args.timeout, kit, args.once)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
