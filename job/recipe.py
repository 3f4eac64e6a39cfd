"""The FedAvg recipe with one site-local MLflow receiver per site and no metric forwarding to the server."""

import os
import re

JOB_NAME = "fedavg-site-tracking"
# The training defaults, stated once: the CLI's and build_recipe's (the training script takes every
# one from the job; `make up` passes ROUNDS and DATASET from .env).
DEFAULTS = {"rounds": 5, "local_epochs": 2, "lr": 0.02, "batch_size": 32, "dataset": "digits", "data_dir": "data",
            "system_metrics_interval": 10.0}  # seconds between samples of a site's CPU, memory, GPUs (MLflow's own)
FED_FORWARDER_ID = "event_to_fed"
# Where the FLARE image installs the vetted site code (client.py, tracking.py, ...: this folder).
SITE_CODE = "/opt/fedtrack/job"
# The modules of that code a job's configuration names; they are never shipped with the job.
# (job.py and its helpers inputs, recipe, audit, runners are never named, so never shipped either.)
SITE_MODULES = ["client", "data", "model", "outcome", "privacy", "progress", "spool", "tracking"]


def check_model_name(name: str):
    """A name for the sites' model registries must need no quoting anywhere (train_args, URIs)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        raise ValueError(f"registered model name {name!r}: use letters, digits, '.', '-' and '_'")


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
    system_metrics_interval: float = DEFAULTS["system_metrics_interval"],
    register_model: str = "",
):
    """The FedAvg recipe, one SiteMLflowReceiver per site, and no metric forwarding to the server.

    With site_code, the job runs the sites' installed code from that folder and ships none; without
    it (the simulator on this host), the training script travels with the job. After the last round
    each site evaluates the final global model and keeps it in its run; with register_model, also
    in its own model registry under that name."""
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
    from nvflare.recipe.utils import add_experiment_tracking, add_final_global_evaluation, set_per_site_config

    from model import SimpleNetwork
    from outcome import RunOutcome
    from privacy import MetricLeakGuard
    from progress import RoundProgress

    if register_model:
        check_model_name(register_model)
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
                + (f" --register-model {register_model}" if register_model else "")
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
    _use_site_receivers(recipe, sites, name, spool_limit, system_metrics_interval)
    _remove_fed_forwarding(recipe)
    recipe._job.to_server(MetricLeakGuard(), id="metric_leak_guard")
    recipe._job.to_server(RunOutcome(), id="run_outcome")  # each site's run ends with the job's real outcome
    recipe._job.to_server(RoundProgress(), id="round_progress")  # the round for `make wait`
    # FedAvg ends on an aggregate no site has seen: nvflare's CrossSiteModelEval, without local-model
    # submission, sends the persisted final global model to every site once more as a "validate"
    # task (client.py answers it with no metric).
    add_final_global_evaluation(recipe)
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


def _use_site_receivers(recipe, sites: dict, name: str, spool_limit: int, system_metrics_interval: float):
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
            system_metrics_interval=system_metrics_interval,
        )


def _remove_fed_forwarding(recipe):
    """Drop the ConvertToFedEvent widget that would forward every metric to the FL server."""
    for app in _client_apps(recipe).values():
        app.app_config.components.pop(FED_FORWARDER_ID, None)
