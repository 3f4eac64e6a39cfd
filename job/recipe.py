"""The FedAvg recipe with one site-local MLflow receiver per site and no metric forwarding to the server."""

from fedtrack.knobs import DEFAULTS, JOB_NAME, knob

FED_FORWARDER_ID = "event_to_fed"
# The package every site and the server have installed: a job's configuration names its classes and
# never ships them.
SITE_PACKAGES = ["fedtrack"]


def build_recipe(
    sites: dict,
    rounds: int = DEFAULTS["rounds"],
    dataset: str = DEFAULTS["dataset"],
    local_epochs: int = DEFAULTS["local_epochs"],
    lr: float = DEFAULTS["lr"],
    batch_size: int = DEFAULTS["batch_size"],
    name: str = JOB_NAME,
    torch_threads: int = 0,
    register_model: str = "",
    lost_after: float = DEFAULTS["lost_after"],
    sim: bool = False,
):
    """The FedAvg recipe: each site's own trainer and receiver, and no metric forwarding to the server.

    The job is configuration only, at every site and in the simulator: typed training settings for
    the site's SiteTrainer, a run name for its receiver. Where the data is and where metrics go are the
    site's (fedtrack.site.settings); only the simulator (sim), where this host is every site, passes each
    site's tracking URI from `sites`. After the last round each site evaluates the final global model and
    keeps it in its run; with register_model, also in its own model registry under that name. A site
    silent for lost_after seconds fails the job."""
    from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
    from nvflare.recipe.utils import add_final_global_evaluation, set_per_site_config

    from fedtrack.job.model import SimpleNetwork
    from fedtrack.server.guard import MetricLeakGuard
    from fedtrack.server.outcome import RunOutcome
    from fedtrack.server.persistor import WorkspacePersistor
    from fedtrack.server.progress import RoundProgress
    from fedtrack.site.trainer import TRAINING_SCRIPT

    if register_model:
        knob("register_model").check(register_model, "register_model")  # a name that needs no quoting anywhere
    recipe = FedAvgRecipe(
        name=name,
        model=SimpleNetwork(),
        min_clients=len(sites),
        num_rounds=rounds,
        train_script=TRAINING_SCRIPT,  # replaced below by each site's SiteTrainer, which names its own
        launch_external_process=False,
        key_metric="",  # clients report no metric to the server, so there is none to select a model by
    )
    set_per_site_config(recipe, {site: {} for site in sites})  # one app per site
    training = {"dataset": dataset, "lr": lr, "local_epochs": local_epochs, "batch_size": batch_size,
                "num_sites": len(sites), "torch_threads": torch_threads, "register_model": register_model}
    _use_site_components(recipe, sites, name, training, lost_after, sim)
    server = recipe._job._deploy_map["server"].app_config.components
    server["persistor"] = WorkspacePersistor()  # the model and its checkpoints are the server's, not the job's
    recipe._job.to_server(MetricLeakGuard(), id="metric_leak_guard")
    recipe._job.to_server(RunOutcome(lost_after), id="run_outcome")  # each site's run ends with the job's real outcome
    recipe._job.to_server(RoundProgress(), id="round_progress")  # the round for `make wait`
    # FedAvg ends on an aggregate no site has seen: nvflare's CrossSiteModelEval, without local-model
    # submission, sends the persisted final global model to every site once more as a "validate"
    # task (client.py answers it with no metric).
    add_final_global_evaluation(recipe)
    recipe._job.set_app_packages(SITE_PACKAGES)  # installed wherever the job runs: never copied into it
    return recipe


# nvflare's recipe API has no public way to list a job's apps or to swap their components: these helpers
# are the only places that reach into the recipe's FedJob.
def _client_apps(recipe) -> dict:
    return {t: app for t, app in recipe._job._deploy_map.items() if t != "server"}


def _use_site_components(recipe, sites: dict, name: str, training: dict, lost_after: float, sim: bool):
    """At each site: its SiteTrainer for nvflare's script executor, its SiteMLflowReceiver, no script
    shipped, and no ConvertToFedEvent (it would forward every metric to the FL server)."""
    from fedtrack.site.receiver import SiteMLflowReceiver
    from fedtrack.site.trainer import SiteTrainer

    recipe._ensure_client_apps_prepared()  # nvflare makes the per-site apps before their first customization
    for site, app in _client_apps(recipe).items():
        for entry in app.app_config.executors:
            entry.executor = SiteTrainer(site_index=list(sites).index(site), **training)
        app.app_config.ext_scripts.clear()
        comps = app.app_config.components
        comps.pop(FED_FORWARDER_ID, None)
        comps["client_receiver"] = SiteMLflowReceiver(
            site=site, experiment_name=f"{name}-{site}", run_name=name, lost_after=lost_after,
            tracking_uri=sites[site] if sim else "",
        )
