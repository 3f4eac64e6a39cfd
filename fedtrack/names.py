"""Names shared by every part of the runtime (site, spool, server, admin, health), stated once.

Each is a contract between two processes or two containers, so a second spelling would drift.
"""

# A site's spool folder, inside its workspace (the client's volume): one SQLite file per job.
SPOOL_DIR = "tracking-spool"
SPOOL_SUFFIX = ".spool"
# The participant's workspace in the FLARE containers (the entrypoint, the health checks, the spool CLI).
WORKSPACE_ENV, DEFAULT_WORKSPACE = "WORKSPACE", "/workspace"

# Set by a deployed site (compose), never by a job: its own MLflow, the forwarder's account and password file.
SITE_URI_ENV = "FEDTRACK_TRACKING_URI"
USER_ENV, PASSWORD_FILE_ENV = "FEDTRACK_MLFLOW_USERNAME", "FEDTRACK_MLFLOW_PASSWORD_FILE"
FORWARDER_ACCOUNT = "forwarder"
# Set by the stack (DELIVERY_RETRY_CAP), never by a job: the longest wait between a forwarder's tries.
RETRY_CAP_ENV = "FEDTRACK_RETRY_CAP"

# MLflow 3's UI opens an experiment in its GenAI views unless this tag says it is model training.
EXPERIMENT_KIND, TRAINING = "mlflow.experimentKind", "custom_model_development"

# What the training script logs at each site (and nowhere else).
METRICS = ("train_loss", "accuracy", "local_accuracy")

# Between the server's job and each site's receiver: how the run ended, and that a site still runs.
OUTCOME_TOPIC = "fedtrack.run_outcome"
ALIVE_TOPIC = "fedtrack.site_alive"
# A site silent this long (seconds) has lost its part of the job (nvflare's grace for a dead job); a job may
# shorten it (fedtrack-job --lost-after). Each site says "alive" ALIVE_PER_LOST times in that span.
LOST_AFTER = 60.0
ALIVE_PER_LOST = 6
STATUS_KEY = "status"
# Job meta key: why the server ended a job it could not finish (read by `make wait` and `make status`).
END_REASON = "fedtrack_end_reason"


def spool_dir(workspace: str = None) -> str:
    """A site's spool folder: in `workspace`, else in this container's workspace ($WORKSPACE)."""
    import os

    return os.path.join(workspace or os.environ.get(WORKSPACE_ENV, DEFAULT_WORKSPACE), SPOOL_DIR)
