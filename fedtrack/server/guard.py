"""Server-side guard: counts analytics records that reach the FL server, and never stores them.

With the job as built by job.py no client forwards analytics, so the count stays 0. If a site's
configuration ever forwarded metrics (nvflare's default ConvertToFedEvent, an external-process
client), the guard logs an error naming the site, keeps no value, and records the count in
`metric_guard.json` in the job's run directory on the server.
"""

import json
import os

from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext

GUARD_FILE = "metric_guard.json"
WATCHED = (ANALYTIC_EVENT_TYPE, "fed." + ANALYTIC_EVENT_TYPE)


class MetricLeakGuard(FLComponent):
    def __init__(self):
        super().__init__()
        self.count = 0
        self.sites = set()

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type in WATCHED:
            data = fl_ctx.get_prop(FLContextKey.EVENT_DATA)
            site = data.get_peer_prop(ReservedKey.IDENTITY_NAME, "unknown") if data is not None else "unknown"
            self.count += 1
            self.sites.add(site)
            self.log_error(fl_ctx, f"site {site} forwarded an analytics record to the server; it was not stored")
        elif event_type == EventType.END_RUN:
            run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
            with open(os.path.join(run_dir, GUARD_FILE), "w") as f:
                json.dump({"analytics_events": self.count, "sites": sorted(self.sites)}, f)
            if self.count:
                self.log_error(fl_ctx, f"{self.count} analytics records reached the server during this job")
