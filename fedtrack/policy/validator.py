"""What a participant runs from a job, checked when the job is deployed there (nvflare's app validator,
named in the participant's local/resources.json by fedtrack.policy.install).

A job is configuration for classes this package installed; the allow list alone compares class paths
and never arguments. Here every component is matched against the participant's own table below: its
class, and for each argument what the participant accepts (a bounded number, a name from a pattern, a
fixed value). Anything else refuses the whole job with one line in its deploy detail: an unknown class
or argument, a path, a command, a `${...}` reference, a nested component (`{"path": ...}` as an
argument, which nvflare builds without the allow list), a filter the job brings, an extra file (for
example an `environment.json` that moves the server's checkpoints), or custom code.
"""

import json
import os
from typing import Callable, Dict, Optional, Tuple

from fedtrack.knobs import JOB_ONLY, KNOBS, KnobError, knob

try:  # the base class where nvflare is installed (sites, the server); the checks below need none of it
    from nvflare.apis.app_validation import AppValidator
except ImportError:  # pragma: no cover - the stdlib-only host side (`make check`)
    AppValidator = object

CLIENT_CONFIG, SERVER_CONFIG = "config_fed_client.json", "config_fed_server.json"
# What nvflare's admin client adds to each folder it submits: its signature and the submitter's certificate
# (nvflare.lighter.tool_consts).
SIGNATURE = {".__nvfl_sig.json", ".__nvfl_submitter.crt"}

TRAINER = "fedtrack.site.trainer.SiteTrainer"
RECEIVER = "fedtrack.site.receiver.SiteMLflowReceiver"
NAME = KNOBS["JOB_NAME"]  # experiment and run names: lowercase letters, digits, '-', '_'
SITE_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"


def _knob(name: str) -> Callable:
    k = knob(name)
    return lambda value, label: k.check(_scalar(value, label), label)


def _pattern(pattern: str, give: str) -> Callable:
    import re

    def check(value, label):
        if not isinstance(value, str) or not re.fullmatch(pattern, value):
            raise KnobError(f"{label}={value!r}: give {give}")
        return value
    return check


def _fixed(expected) -> Callable:
    def check(value, label):
        if value != expected or type(value) is not type(expected):
            raise KnobError(f"{label}={value!r}: this participant accepts only {expected!r}")
        return value
    return check


def _scalar(value, label: str) -> str:
    """A JSON number or string as text for a knob; anything else (a bool, list, object) is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise KnobError(f"{label}={json.dumps(value)}: give a plain number or name")
    return str(value)


def _dataset(value, label):
    from fedtrack.site import settings

    allowed = settings.datasets()
    if value not in allowed:
        raise KnobError(f"{label}={value!r}: this site trains on {', '.join(allowed)}")
    return value


def _optional_name(value, label):
    return value if value == "" else JOB_ONLY["register_model"].check(_scalar(value, label), label)


# The site's training settings: SiteTrainer's arguments, and what the site accepts for each.
TRAINING = {
    "dataset": _dataset,
    "lr": _knob("lr"),
    "local_epochs": _knob("local_epochs"),
    "batch_size": _knob("batch_size"),
    "site_index": _knob("site_index"),
    "num_sites": _knob("num_sites"),
    "torch_threads": _knob("torch_threads"),
    "register_model": _optional_name,
}
# Tracking is the site's (its MLflow, spool limit, system metrics: fedtrack.site.settings); a job names its run.
TRACKING = {
    "site": _pattern(SITE_NAME, "the site's name"),
    "experiment_name": _pattern(r"[a-z0-9][a-z0-9_-]{0,62}-" + SITE_NAME, "JOB_NAME-SITE"),
    "run_name": lambda v, label: NAME.check(_scalar(v, label), label),
    "lost_after": _knob("lost_after"),
}
CLIENT = {TRAINER: TRAINING, RECEIVER: TRACKING}
SERVER = {
    "nvflare.app_common.workflows.fedavg.FedAvg": {
        "num_clients": _knob("num_sites"), "num_rounds": _knob("rounds"), "aggregation_weights": _fixed({})},
    "nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval": {
        "model_locator_id": _fixed("locator"), "submit_model_task_name": _fixed("")},
    "nvflare.app_common.widgets.validation_json_generator.ValidationJsonGenerator": {},
    "nvflare.app_common.widgets.metrics_artifact_writer.MetricsArtifactWriter": {},
    "fedtrack.server.persistor.WorkspacePersistor": {},
    "nvflare.app_opt.pt.file_model_locator.PTFileModelLocator": {"pt_persistor_id": _fixed("persistor")},
    "fedtrack.server.guard.MetricLeakGuard": {},
    "fedtrack.server.outcome.RunOutcome": {"lost_after": _knob("lost_after")},
    "fedtrack.server.progress.RoundProgress": {},
}

# What the server runs with every job, whatever the job leaves out: the guard that counts metrics reaching
# it, and the outcome each site's run ends with.
SERVER_REQUIRED = ("fedtrack.server.guard.MetricLeakGuard", "fedtrack.server.outcome.RunOutcome")


class Refused(Exception):
    """Why a participant refuses a job: one line for the job's deploy detail."""


def check_training(given: dict) -> Optional[str]:
    """None if every training setting is one the site accepts, else the reason (SiteTrainer, at run time)."""
    try:
        _check_args(TRAINER, given, TRAINING)
    except Refused as e:
        return str(e)
    return None


def _check_args(path: str, args, table: Dict[str, Callable]):
    if not isinstance(args, dict):
        raise Refused(f"{path}: its arguments must be an object")
    for name, value in args.items():
        if name not in table:
            accepted = ", ".join(table) or "none"
            raise Refused(f"{path} argument {name!r} is not one this participant accepts (it accepts: {accepted})")
        try:
            table[name](value, name)
        except KnobError as e:
            raise Refused(f"{path}: {e}") from None
    if "site_index" in args and "num_sites" in args and not int(args["site_index"]) < int(args["num_sites"]):
        raise Refused(f"{path}: site_index {args['site_index']} is not below num_sites {args['num_sites']}")


def _check_component(entry, where: str, table: dict):
    if not isinstance(entry, dict) or set(entry) - {"id", "path", "args"}:
        raise Refused(f"{where}: give only id, path and args")
    path = entry.get("path")
    if path not in table:
        raise Refused(f"{where}: class {path!r} is not one this participant runs")
    _check_args(path, entry.get("args", {}), table[path])


def _check_keys(config: dict, name: str, runs: str):
    """A config file holds its format, what runs (executors or workflows), components and filters, nothing else."""
    unknown = set(config) - {"format_version", runs, "components", "task_data_filters", "task_result_filters"}
    if unknown:
        raise Refused(f"{name}: unknown keys {sorted(unknown)}")


def check_client_config(config: dict):
    _check_keys(config, CLIENT_CONFIG, "executors")
    executors = config.get("executors", [])
    if not isinstance(executors, list) or len(executors) != 1:
        raise Refused(f"{CLIENT_CONFIG}: give exactly one executor, {TRAINER}")
    ex = executors[0]
    if not isinstance(ex, dict) or set(ex) - {"tasks", "executor"} or ex.get("tasks") != ["*"]:
        raise Refused(f"{CLIENT_CONFIG}: the executor takes every task (tasks [\"*\"]) and nothing else")
    _check_component(ex.get("executor"), "executor", {TRAINER: TRAINING})
    _check_components(config, CLIENT_CONFIG, {RECEIVER: TRACKING})


def check_server_config(config: dict):
    _check_keys(config, SERVER_CONFIG, "workflows")
    workflows = config.get("workflows", [])
    if not isinstance(workflows, list):
        raise Refused(f"{SERVER_CONFIG}: workflows must be a list")
    for i, wf in enumerate(workflows):
        _check_component(wf, f"workflow {wf.get('id', i) if isinstance(wf, dict) else i}", SERVER)
    _check_components(config, SERVER_CONFIG, SERVER)
    present = {c.get("path") for c in config.get("components", [])}
    missing = [p for p in SERVER_REQUIRED if p not in present]
    if missing:
        raise Refused(f"{SERVER_CONFIG} leaves out {', '.join(missing)}, which the server runs with every job")


def _check_components(config: dict, name: str, table: dict):
    components = config.get("components", [])
    if not isinstance(components, list):
        raise Refused(f"{name}: components must be a list")
    for i, comp in enumerate(components):
        _check_component(comp, f"component {comp.get('id', i) if isinstance(comp, dict) else i}", table)
    for key in ("task_data_filters", "task_result_filters"):
        if config.get(key, []):
            raise Refused(f"{name}: {key} are this participant's own (local/privacy.json); give none")


def check_app(app_folder: str, is_server: bool) -> str:
    """'' if this participant runs the app folder, else the reason it refuses the job."""
    config_name = SERVER_CONFIG if is_server else CLIENT_CONFIG
    try:
        for folder, dirs, files in os.walk(app_folder):
            rel = os.path.relpath(folder, app_folder)
            extra = [os.path.normpath(os.path.join(rel, n)) for n in dirs + files if n not in SIGNATURE
                     and not (rel == "." and n == "config" and n in dirs)
                     and not (rel == "config" and n == config_name)]
            if extra:
                raise Refused(f"the job brings {', '.join(sorted(extra))}: this participant takes only config/{config_name}"
                              " (no custom code, no environment.json, no other file)")
        path = os.path.join(app_folder, "config", config_name)
        if not os.path.isfile(path):
            raise Refused(f"the job has no config/{config_name}")
        with open(path) as f:
            try:
                config = json.load(f)
            except ValueError as e:
                raise Refused(f"config/{config_name} is not JSON: {e}") from None
        if not isinstance(config, dict):
            raise Refused(f"config/{config_name} must be an object")
        (check_server_config if is_server else check_client_config)(config)
    except Refused as e:
        return f"{'the server' if is_server else 'this site'} refuses the job: {e}"
    return ""


class ParticipantAppValidator(AppValidator):
    """Named in local/resources.json as `app_validator` (server and sites): the deploy-time check above."""

    def __init__(self, is_server: bool = False):
        super().__init__()
        self.is_server = is_server

    def validate(self, app_folder: str) -> Tuple[str, Dict]:
        return check_app(app_folder, self.is_server), {}
