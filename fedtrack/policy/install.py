"""Install this deployment's local policy into a participant's workspace (server or client site).

    fedtrack-policy KIT WORKSPACE

Run by the FLARE container's entrypoint at every start, from the image, so the policy is reviewed
and versioned with the image and overrides the kit's defaults (local/*.json wins over *.default):

- authorization.json: no role may run shell commands (ls, cat, tail, grep, ...) or bring its own
  code (BYOC) at any participant; the submitter (role `lead`) may submit jobs and manage and
  download its own; nobody may operate (restart, shut down, remove) a participant remotely.
- resources.json: only the component classes this project's job uses may be built from a job's
  configuration (nvflare's allow list; the default list would let a config-only job add, e.g.,
  ConvertToFedEvent, which forwards every metric to the server); log streaming to the server is
  off and the site log streamer is removed; the server keeps its job store on its volume, and
  marks the jobs a restart interrupted ABANDONED (fedtrack.server.outcome).
"""

import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# Exactly the classes the FedAvg job (job/job.py, fedtrack.job) configures; anything else is refused.
CLIENT_CLASSES = [
    "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor",
    "fedtrack.site.receiver.SiteMLflowReceiver",
]
SERVER_CLASSES = [
    "nvflare.app_common.workflows.fedavg.FedAvg",
    # after the last round, the final global model to every site once more (recipe.py)
    "nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval",
    "nvflare.app_common.widgets.validation_json_generator.ValidationJsonGenerator",
    "nvflare.app_common.widgets.metrics_artifact_writer.MetricsArtifactWriter",
    "nvflare.app_opt.pt.file_model_persistor.PTFileModelPersistor",
    "nvflare.app_opt.pt.file_model_locator.PTFileModelLocator",
    "fedtrack.job.model.SimpleNetwork",
    "fedtrack.server.guard.MetricLeakGuard",
    "fedtrack.server.outcome.RunOutcome",
    "fedtrack.server.progress.RoundProgress",
]
# The server's own: at its start, jobs a restart left RUNNING are marked ABANDONED (fedtrack.server.outcome).
SERVER_SYSTEM_COMPONENTS = [{"id": "abandon_unfinished_jobs", "path": "fedtrack.server.outcome.AbandonUnfinishedJobs", "args": {}}]


def resources(default: dict, is_server: bool, workspace: str) -> dict:
    out = dict(default)
    out["class_list_enforcement_mode"] = "enforce"
    out["class_allow_list"] = SERVER_CLASSES if is_server else CLIENT_CLASSES
    out["allow_log_streaming"] = False
    out["components"] = [c for c in default.get("components", []) if not c.get("path", "").endswith("SiteLogStreamer")]
    if is_server:  # the job store and snapshots live on the server's volume, not in the container's /tmp
        out = json.loads(json.dumps(out).replace("/tmp/nvflare", os.path.join(workspace, "store")))
        out["components"] += SERVER_SYSTEM_COMPONENTS
    return out


def install(kit: str, workspace: str) -> str:
    is_server = os.path.isfile(os.path.join(kit, "startup", "fed_server.json"))
    local = os.path.join(workspace, "local")
    os.makedirs(local, exist_ok=True)
    with open(os.path.join(kit, "local", "resources.json.default")) as f:
        default = json.load(f)
    with open(os.path.join(local, "resources.json"), "w") as f:
        json.dump(resources(default, is_server, workspace), f, indent=2)
    shutil.copyfile(os.path.join(HERE, "authorization.json"), os.path.join(local, "authorization.json"))
    return "server" if is_server else "client"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: fedtrack-policy KIT WORKSPACE", file=sys.stderr)
        return 2
    print(f"fedtrack: installed the {install(argv[0], argv[1])} policy in {argv[1]}/local")
    return 0


if __name__ == "__main__":
    sys.exit(main())
