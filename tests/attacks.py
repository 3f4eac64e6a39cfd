"""The attacks of an admin-kit holder on a job's configuration (issue 21), as data both tiers submit: the
processes tier (tests/processes/test_deploy_refusals.py) and the Docker stack (tests/integration/test_attacks.py).
Each is the real exported job with one edit; the participant it targets must refuse it at deploy with a
reason holding the words given."""

import json
import os

from checks import SITES

MARKER = "fedtrack-attack-ran"  # what every payload below would write, in the job process's folder (a site's workspace)
# The payload: the first characters of the forwarder's password (where the site has one) into MARKER.
_CODE = (f"s = ''\ntry:\n    s = open('/run/secrets/mlflow_forwarder_password').read()[:4]\nexcept OSError:\n    pass\n"
         f"open('{MARKER}', 'w').write(s)\n")
PAYLOAD = f"exec(bytes.fromhex('{_CODE.encode().hex()}'))"
SECRET_REF = "${secret:file:/run/secrets/mlflow_forwarder_password}"
SITE, SERVER = SITES[0], "server"


def client(config):
    return config[f"app_{SITE}"]["config_fed_client.json"]


def server(config):
    return config["app_server"]["config_fed_server.json"]


def trainer_args(config):
    return client(config)["executors"][0]["executor"]["args"]


def receiver_args(config):
    return next(c for c in client(config)["components"] if c["id"] == "client_receiver")["args"]


def server_component(config, cid):
    return next(c for c in server(config)["components"] if c["id"] == cid)


# name: (edit of the job's configs, participant that refuses, words its reason must hold)
ATTACKS = {
    # The reproduction in the issue: nvflare's executor running a stdlib script with the job's arguments.
    "stdlib script as the training script": (
        lambda c: client(c)["executors"][0].update(executor={
            "path": "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor",
            "args": {"execution_mode": "in_process", "task_script_path": "/usr/lib/python3.11/timeit.py",
                     "task_script_args": f"-n 1 -r 1 {PAYLOAD}"}}),
        SITE, "class 'nvflare.app_common.executors.client_api_executor.ClientAPIExecutor' is not one this participant runs"),
    "a script path for the site's own trainer": (
        lambda c: trainer_args(c).update(task_script_path="/usr/lib/python3.11/timeit.py"),
        SITE, "argument 'task_script_path' is not one this participant accepts"),
    "an external process with a command": (
        lambda c: trainer_args(c).update(execution_mode="external_process", command=f"python3 -c \"{PAYLOAD}\""),
        SITE, "argument 'execution_mode' is not one this participant accepts"),
    "a secret reference as a model name": (
        lambda c: trainer_args(c).update(register_model=SECRET_REF),
        SITE, "register_model=${secret:file:"),
    "a secret reference as a learning rate": (
        lambda c: trainer_args(c).update(lr=SECRET_REF),
        SITE, "lr=${secret:file:"),
    "a path as a dataset": (
        lambda c: trainer_args(c).update(dataset="/etc"),
        SITE, "dataset='/etc': this site trains on"),
    "a batch size out of the site's bounds": (
        lambda c: trainer_args(c).update(batch_size=10 ** 9),
        SITE, "batch_size=1000000000: give a whole number from 1 to 65536"),
    "another tracking server": (
        lambda c: receiver_args(c).update(tracking_uri="http://127.0.0.1:9/"),
        SITE, "argument 'tracking_uri' is not one this participant accepts"),
    "a spool limit that fills the disk": (
        lambda c: receiver_args(c).update(max_spooled_records=10 ** 12),
        SITE, "argument 'max_spooled_records' is not one this participant accepts"),
    "system metrics every instant": (
        lambda c: receiver_args(c).update(system_metrics_interval=0.000001),
        SITE, "argument 'system_metrics_interval' is not one this participant accepts"),
    "ConvertToFedEvent, forwarding every metric to the server": (
        lambda c: client(c)["components"].append({
            "id": "fed_forwarder", "path": "nvflare.app_common.widgets.convert_to_fed_event.ConvertToFedEvent",
            "args": {"events_to_convert": ["analytix_log_stats"], "fed_event_prefix": "fed."}}),
        SITE, "class 'nvflare.app_common.widgets.convert_to_fed_event.ConvertToFedEvent' is not one this participant runs"),
    "a result filter of the job's": (
        lambda c: client(c)["task_result_filters"].append({"tasks": ["train"], "filters": [
            {"path": "nvflare.app_common.filters.percentile_privacy.PercentilePrivacy", "args": {}}]}),
        SITE, "task_result_filters are this participant's own"),
    "custom code": (
        lambda c: c[f"app_{SITE}"].update({"custom/probe.py": PAYLOAD}),
        SITE, "the job brings custom"),
    "the stock persistor loading an absolute checkpoint as a pickle": (
        lambda c: server_component(c, "persistor").update(
            path="nvflare.app_opt.pt.file_model_persistor.PTFileModelPersistor",
            args={"source_ckpt_file_full_name": "/etc/passwd", "load_weights_only": False}),
        SERVER, "class 'nvflare.app_opt.pt.file_model_persistor.PTFileModelPersistor' is not one this participant runs"),
    "a component built from an argument (config_type dict)": (
        lambda c: server_component(c, "run_outcome").update(
            args={"lost_after": {"path": "subprocess.Popen", "args": {"args": ["true"]}, "config_type": "dict"}}),
        SERVER, "lost_after={\"path\": \"subprocess.Popen\""),
    "a job without the server's metric guard": (
        lambda c: server(c)["components"].remove(server_component(c, "metric_leak_guard")),
        SERVER, "leaves out fedtrack.server.guard.MetricLeakGuard"),
    "an environment.json moving the checkpoints": (
        lambda c: c["app_server"].update({"environment.json": {"APP_CKPT_DIR": "/tmp/moved"}}),
        SERVER, "the job brings config/environment.json"),
    "the job's own privacy scope": (
        lambda c: c["meta.json"].update(scope="none"),
        SITE, "privacy scope 'none' is not allowed"),
}


# Refused by nvflare's own deploy check (the site's privacy scopes), not by fedtrack.policy.validator.
NVFLARE_REFUSES = {"the job's own privacy scope"}


def load(job_dir) -> dict:
    """{app: {config file: JSON}, "meta.json": JSON}, to edit."""
    config = {"meta.json": json.loads((job_dir / "meta.json").read_text())}
    for app in (p for p in job_dir.iterdir() if p.is_dir()):
        config[app.name] = {f.name: json.loads(f.read_text()) for f in (app / "config").iterdir()}
    return config


def write(config: dict, job_dir):
    """The edited job: JSON into each app's config/, text (custom code) at the path given."""
    for app, files in config.items():
        if app == "meta.json":
            (job_dir / app).write_text(json.dumps(files))
            continue
        for name, content in files.items():
            path = job_dir / app / (name if "/" in name else os.path.join("config", name))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content if isinstance(content, str) else json.dumps(content, indent=2))


def attacked_files(base_dir, attack: str) -> dict:
    """{relative path: text} of every file the attack changes or adds in the exported job at base_dir."""
    import pathlib

    base = pathlib.Path(base_dir)
    config = load(base)
    edit = ATTACKS[attack][0]
    before = json.dumps(config, sort_keys=True)
    edit(config)
    assert json.dumps(config, sort_keys=True) != before, f"{attack}: the edit changed nothing"
    out = {}
    original = load(base)
    for app, files in config.items():
        if app == "meta.json":
            if files != original["meta.json"]:
                out["meta.json"] = json.dumps(files)
            continue
        for name, content in files.items():
            if original.get(app, {}).get(name) != content:
                rel = os.path.join(app, name if "/" in name else os.path.join("config", name))
                out[rel] = content if isinstance(content, str) else json.dumps(content, indent=2)
    return out
