"""Install this deployment's local policy into a participant's workspace (server or client site).

    fedtrack-policy KIT WORKSPACE

Run by the FLARE container's entrypoint at every start, from the image, so the policy is reviewed
and versioned with the image and overrides the kit's defaults (local/*.json wins over *.default):

- authorization.json: no role may run shell commands (ls, cat, tail, grep, ...) or bring its own
  code (BYOC) at any participant; the submitter (role `lead`) may submit jobs and manage and
  download its own; nobody may operate (restart, shut down, remove) a participant remotely.
- resources.json: only the component classes this project's job uses may be built from a job's
  configuration (nvflare's allow list; the default list would let a config-only job add, e.g.,
  ConvertToFedEvent, which forwards every metric to the server), and each job is checked at deploy,
  class by class and argument by argument, by fedtrack.policy.validator (the allow list compares
  class names only); log streaming to the server is off and the site log streamer is removed; the
  server keeps its job store on its volume, and marks the jobs a restart interrupted ABANDONED
  (fedtrack.server.outcome).
- privacy.json (sites): every task result a site sends passes its WeightsOnly filter first
  (fedtrack.site.filters): weights and the step count leave, nothing metric-like; a job cannot remove
  it, and a job naming any other privacy scope is refused.
"""

import json
import os
import shutil
import sys

from fedtrack.policy import validator

HERE = os.path.dirname(os.path.abspath(__file__))

# Exactly the classes the FedAvg job (job/job.py, fedtrack.job) configures, as the deploy check lists
# them with the arguments each may take; anything else is refused.
CLIENT_CLASSES = list(validator.CLIENT)
SERVER_CLASSES = list(validator.SERVER)
# A site's one privacy scope, its default: a job naming another is refused at deploy.
PRIVACY = {"scopes": [{"name": "site", "task_result_filters": [{"path": "fedtrack.site.filters.WeightsOnly", "args": {}}]}],
           "default_scope": "site"}
# The server's own: at its start, jobs a restart left RUNNING are marked ABANDONED (fedtrack.server.outcome).
SERVER_SYSTEM_COMPONENTS = [{"id": "abandon_unfinished_jobs", "path": "fedtrack.server.outcome.AbandonUnfinishedJobs", "args": {}}]


def resources(default: dict, is_server: bool, workspace: str) -> dict:
    out = dict(default)
    out["class_list_enforcement_mode"] = "enforce"
    out["class_allow_list"] = SERVER_CLASSES if is_server else CLIENT_CLASSES
    out["app_validator"] = {"path": "fedtrack.policy.validator.ParticipantAppValidator", "args": {"is_server": is_server}}
    out["allow_log_streaming"] = False
    out["components"] = [c for c in default.get("components", []) if not c.get("path", "").endswith("SiteLogStreamer")]
    if is_server:  # the job store and snapshots live on the server's volume, not in the container's /tmp
        out = json.loads(json.dumps(out).replace("/tmp/nvflare", os.path.join(workspace, "store")))
        out["components"] += SERVER_SYSTEM_COMPONENTS
    return out


def install_for_simulator(job_workspace: str, extra: tuple = ()):
    """The simulator's one local policy (all its participants share it): the same allow list as the sites
    and the server (plus `extra`, for a test's positive control), enforced."""
    local = os.path.join(job_workspace, "local")
    os.makedirs(local, exist_ok=True)
    with open(os.path.join(local, "resources.json"), "w") as f:
        json.dump({"format_version": 2, "class_list_enforcement_mode": "enforce",
                   "class_allow_list": CLIENT_CLASSES + SERVER_CLASSES + list(extra)}, f, indent=2)


def install(kit: str, workspace: str) -> str:
    is_server = os.path.isfile(os.path.join(kit, "startup", "fed_server.json"))
    local = os.path.join(workspace, "local")
    os.makedirs(local, exist_ok=True)
    with open(os.path.join(kit, "local", "resources.json.default")) as f:
        default = json.load(f)
    with open(os.path.join(local, "resources.json"), "w") as f:
        json.dump(resources(default, is_server, workspace), f, indent=2)
    shutil.copyfile(os.path.join(HERE, "authorization.json"), os.path.join(local, "authorization.json"))
    privacy = os.path.join(local, "privacy.json")
    if is_server:
        if os.path.exists(privacy):
            os.remove(privacy)
    else:
        with open(privacy, "w") as f:
            json.dump(PRIVACY, f, indent=2)
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
