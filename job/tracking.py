"""The site-local MLflow receiver: one per site, configured with that site's own tracking URI.

It fixes what the stock MLflowReceiver gets wrong for a site-local tracking server:
- the experiment is created without a client-side `file://` artifact location, so the site's
  server assigns its own (`mlflow-artifacts:/...`) and artifacts are stored through it;
- each run is tagged `site` and `job_id`;
- it refuses to run at any other site than the one it was configured for, so a misrouted job
  can never send one site's metrics to another site's server;
- it checks that the tracking server answers before the job starts logging, with a short
  timeout and a one-line error, instead of blocking for minutes in HTTP retries;
- `buffer_flush_time` is kept under its own name so it survives job export.
"""

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import List, Optional

from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE
from nvflare.apis.fl_context import FLContext
from nvflare.app_opt.tracking.mlflow.mlflow_receiver import MLflowReceiver


def probe_tracking_server(uri: str, timeout: float = 5.0) -> Optional[str]:
    """None if the MLflow server at `uri` answers its tracking API, else a short reason.

    Uses the REST path a client uses (not /health, which skips MLflow's host check).
    """
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            json.load(resp)
        return None
    except urllib.error.HTTPError as e:
        body = e.read(200).decode(errors="replace").strip()
        return f"HTTP {e.code} {body}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return str(getattr(e, "reason", e))


class SiteMLflowReceiver(MLflowReceiver):
    def __init__(
        self,
        site: str,
        tracking_uri: str,
        experiment_name: str,
        run_name: str = "fedavg",
        events: Optional[List[str]] = None,
        buffer_flush_time: float = 1.0,
        probe_timeout: float = 5.0,
    ):
        self.site = site
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.buffer_flush_time = buffer_flush_time
        self.probe_timeout = probe_timeout
        super().__init__(
            tracking_uri=tracking_uri,
            kw_args={
                "experiment_name": experiment_name,
                "run_name": run_name,
                "experiment_tags": {"site": site},
                "run_tags": {"site": site},
            },
            events=events or [ANALYTIC_EVENT_TYPE],
            buffer_flush_time=buffer_flush_time,
        )

    def initialize(self, fl_ctx: FLContext):
        identity = fl_ctx.get_identity_name()
        if identity != self.site:
            raise RuntimeError(
                f"this receiver is configured for site {self.site!r} but runs at {identity!r}; "
                f"refusing to send {identity}'s metrics to {self.site}'s tracking server"
            )
        problem = probe_tracking_server(self.tracking_uri, self.probe_timeout)
        if problem:
            raise RuntimeError(
                f"{self.site}: MLflow tracking server {self.tracking_uri} does not answer ({problem}); "
                f"start it or fix this site's tracking URI"
            )
        super().initialize(fl_ctx)

    def _get_run_name(self, kwargs, site_name, job_id_tag, job_name):
        return f"{site_name}-{job_id_tag[:8]}"

    def _get_or_create_experiment(self, mlflow_client, experiment_name, artifact_location, experiment_tags=None):
        # Ignore the client-side artifact path: the site's server decides where artifacts live.
        experiment = mlflow_client.get_experiment_by_name(name=experiment_name)
        if experiment:
            return experiment.experiment_id
        return mlflow_client.create_experiment(name=experiment_name, tags=experiment_tags)
