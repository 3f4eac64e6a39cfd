"""The FedAvg recipe with one site-local MLflow receiver per site and no metric forwarding to the server."""

import os

from fedtrack.knobs import DEFAULTS, JOB_NAME, knob

FED_FORWARDER_ID = "event_to_fed"
# Where the FLARE image has this folder (a link to the installed fedtrack.job): the job names the
# training script there by absolute path and ships no code.
SITE_CODE = "/opt/fedtrack/job"
# The package every site and the server have installed: a job's configuration names its classes and
# never ships them.
SITE_PACKAGES = ["fedtrack"]


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
    lost_after: float = DEFAULTS["lost_after"],
):
    """The FedAvg recipe, one SiteMLflowReceiver per site, and no metric forwarding to the server.

    With site_code, the job runs the sites' installed code from that folder and ships none; without
    it (the simulator on this host), the training script travels with the job. After the last round
    each site evaluates the final global model and keeps it in its run; with register_model, also
    in its own model registry under that name. A site silent for lost_after seconds fails the job."""
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
    from nvflare.recipe.utils import add_experiment_tracking, add_final_global_evaluation, set_per_site_config

    from fedtrack.job.model import SimpleNetwork
    from fedtrack.server.guard import MetricLeakGuard
    from fedtrack.server.outcome import RunOutcome
    from fedtrack.server.progress import RoundProgress

    if register_model:
        knob("register_model").check(register_model, "register_model")  # a name that needs no quoting anywhere
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
    _use_site_receivers(recipe, sites, name, spool_limit, system_metrics_interval, lost_after)
    _remove_fed_forwarding(recipe)
    recipe._job.to_server(MetricLeakGuard(), id="metric_leak_guard")
    recipe._job.to_server(RunOutcome(lost_after), id="run_outcome")  # each site's run ends with the job's real outcome
    recipe._job.to_server(RoundProgress(), id="round_progress")  # the round for `make wait`
    # FedAvg ends on an aggregate no site has seen: nvflare's CrossSiteModelEval, without local-model
    # submission, sends the persisted final global model to every site once more as a "validate"
    # task (client.py answers it with no metric).
    add_final_global_evaluation(recipe)
    recipe._job.set_app_packages(SITE_PACKAGES)  # installed wherever the job runs: never copied into it
    if site_code:
        _ship_no_code(recipe)
    return recipe


# nvflare's recipe API has no public way to list a job's apps or to leave the training script out
# of it: these two helpers are the only places that reach into the recipe's FedJob.
def _client_apps(recipe) -> dict:
    return {t: app for t, app in recipe._job._deploy_map.items() if t != "server"}


def _ship_no_code(recipe):
    """Config only: the training script stays out of custom/ too."""
    for app in _client_apps(recipe).values():
        app.app_config.ext_scripts.clear()


def _use_site_receivers(recipe, sites: dict, name: str, spool_limit: int, system_metrics_interval: float,
                        lost_after: float):
    """Swap each site's stock receiver for the site-local one (same id, same events, same URI)."""
    from fedtrack.site.receiver import SiteMLflowReceiver
    from fedtrack.spool.store import DEFAULT_MAX_RECORDS

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
            lost_after=lost_after,
        )


def _remove_fed_forwarding(recipe):
    """Drop the ConvertToFedEvent widget that would forward every metric to the FL server."""
    for app in _client_apps(recipe).values():
        app.app_config.components.pop(FED_FORWARDER_ID, None)
