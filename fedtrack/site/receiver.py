"""The site-local MLflow receiver: one per site, configured with that site's own tracking URI.

It listens to the site's local analytics events only and never talks to the network itself:
each record (metric, param, tag, text artifact) is appended to a durable spool on the site's
storage, and a forwarder process delivers the spool to the site's MLflow server (fedtrack.spool).
So a log call in the training script returns in microseconds whether the server is up, slow or
down, and nothing logged is lost or duplicated in MLflow.

Compared with nvflare's stock MLflowReceiver it also:
- refuses to run at any other site than the one it was configured for, so a misrouted job can
  never send one site's metrics to another site's server;
- at a deployed site, delivers only to the site's own tracking server (FEDTRACK_TRACKING_URI, set by
  the site, not by the job), with the spool limit and system-metrics interval the site sets
  (fedtrack.site.settings); only the simulator, where this host is every site, takes a job's URI;
- creates the experiment without a client-side `file://` artifact location, so artifacts are
  stored and served by the site's server (`mlflow-artifacts:/...`);
- tags each run `site` and `job_id`, and ends it with the job's real outcome (fedtrack.server.outcome):
  FINISHED only when the server reports the run complete, KILLED when it was aborted, FAILED
  otherwise (and, by the forwarder, when the job's process died without closing the spool).
"""


import contextlib
import logging
import os
import threading
import time

from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply
from nvflare.app_common.widgets.streaming import AnalyticsReceiver

from fedtrack.names import ALIVE_PER_LOST, ALIVE_TOPIC, LOST_AFTER, OUTCOME_TOPIC, SITE_URI_ENV, STATUS_KEY, spool_dir
from fedtrack.site import settings
from fedtrack.site.records import records_of
from fedtrack.site.system import gpus, system_metrics
from fedtrack.spool.delivery import check_destination
from fedtrack.spool.forwarder import start_forwarder
from fedtrack.spool.writer import SpoolWriter

FORWARDER_CHECK = 5.0  # seconds between checks that the site's forwarder runs

log = logging.getLogger("fedtrack.tracking")


def site_status(server_says: str = None, aborted: bool = False, fatal: bool = False) -> str:
    """A site's run status from what its job process saw when the run ended.

    server_says: the outcome the server's RunOutcome sent (None if none arrived); aborted: the run was
    ended by an abort command (an admin's abort_job, or a server that no longer runs the job); fatal:
    a fatal error at this site. Anything but a run the server reports complete is not FINISHED.
    """
    if fatal:
        return "FAILED"
    if server_says in ("FINISHED", "FAILED", "KILLED"):
        return server_says
    return "KILLED" if aborted else "FAILED"


class SiteMLflowReceiver(AnalyticsReceiver):
    def __init__(
        self,
        site: str,
        experiment_name: str,
        run_name: str = "fedavg",
        lost_after: float = LOST_AFTER,
        tracking_uri: str = "",
    ):
        super().__init__(events=[ANALYTIC_EVENT_TYPE])  # the site's local events only
        self.site = site
        self.tracking_uri = tracking_uri  # the simulator's; a deployed site's is its own (SITE_URI_ENV)
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.lost_after = lost_after
        self.max_spooled_records = self.system_metrics_interval = None  # the site's (fedtrack.site.settings)
        self.alive_interval = float(lost_after) / ALIVE_PER_LOST  # the server's job deems a site silent that long lost
        self.writer = None
        self.spool_dir = None
        self._last_check = 0.0
        self.server_says = None  # how the server's run ended (fedtrack.server.outcome.RunOutcome), if it told us
        self.aborted = self.fatal = False
        self._ended = threading.Event()

    def initialize(self, fl_ctx: FLContext):
        identity = fl_ctx.get_identity_name()
        if identity != self.site:
            raise RuntimeError(
                f"this receiver is configured for site {self.site!r} but runs at {identity!r}; "
                f"refusing to send {identity}'s metrics to {self.site}'s tracking server"
            )
        if self.tracking_uri:
            check_destination(self.tracking_uri)  # the site's own MLflow, whatever the job asks
        self.tracking_uri = os.environ.get(SITE_URI_ENV) or self.tracking_uri
        if not self.tracking_uri:
            raise RuntimeError(f"site {identity} has no tracking server: set {SITE_URI_ENV} in its environment")
        self.max_spooled_records = settings.spool_limit()
        self.system_metrics_interval = settings.system_metrics_interval()  # seconds between samples; 0: none
        job_id = run_label = fl_ctx.get_job_id()
        if job_id == "simulate_job":  # every simulator run has this id: make the run's tag unique
            job_id = f"simulate_job-{int(time.time() * 1000)}"
            run_label = f"sim-{job_id[-13:]}"
        self.spool_dir = spool_dir(fl_ctx.get_engine().get_workspace().get_root_dir())
        self.writer = SpoolWriter(
            self.spool_dir,
            f"{job_id}-{self.site}",
            meta={
                "tracking_uri": self.tracking_uri,
                "experiment_name": self.experiment_name,
                "site": self.site,
                "job_id": job_id,
                "run_name": f"{self.site}-{run_label[:17]}",
                "created_ms": int(time.time() * 1000),
            },
            max_records=self.max_spooled_records,
        )
        self._ensure_forwarder()
        engine = fl_ctx.get_engine()
        engine.register_aux_message_handler(OUTCOME_TOPIC, self._take_outcome)
        threading.Thread(target=self._say_alive, args=(engine,), name="site_alive", daemon=True).start()
        if self.system_metrics_interval > 0:
            threading.Thread(target=self._sample_system, name="system_metrics", daemon=True).start()
        self.log_info(fl_ctx, f"tracking {self.site} to {self.tracking_uri} through the spool in {self.spool_dir}")

    def _say_alive(self, engine):
        """Tell the server's job that this site's part still runs (fedtrack.server.outcome.RunOutcome watches)."""
        while not self._ended.wait(self.alive_interval):
            try:
                with engine.new_context() as fl_ctx:
                    engine.send_aux_request(targets=None, topic=ALIVE_TOPIC, request=Shareable(),
                                            timeout=0.0, fl_ctx=fl_ctx, optional=True)
            except Exception as e:  # noqa: BLE001 - the server may be away for a moment; say it again later
                log.debug("could not tell the server this site is alive: %s", e)

    def _sample_system(self):
        """The site's hardware use over the job, into its own run only, through the same spool."""
        handles, step, failing = gpus(), 0, False
        with contextlib.suppress(Exception):
            system_metrics(handles)  # starts the first CPU share's interval
        while not self._ended.wait(self.system_metrics_interval):
            try:
                sample, ts = system_metrics(handles), int(time.time() * 1000)
                if self._ended.is_set():
                    break  # the spool is closing
                for key, value in sample.items():
                    self.writer.append("metric", key, float(value), step, ts)
                step, failing = step + 1, False
            except Exception as e:  # noqa: BLE001 - a failed sample must not end the job; try at the next one
                if not failing:
                    log.warning("system metrics: %s", e)
                failing = True

    def _take_outcome(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        self.server_says = request.get(STATUS_KEY)
        return make_reply(ReturnCode.OK)

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.ABORT_TASK and fl_ctx.get_prop(FLContextKey.RUN_ABORT_REQUESTED):
            self.aborted = True
        elif event_type == EventType.FATAL_SYSTEM_ERROR:
            self.fatal = True
        super().handle_event(event_type, fl_ctx)

    def _ensure_forwarder(self):
        self._last_check = time.monotonic()
        start_forwarder(self.spool_dir)

    def save(self, fl_ctx: FLContext, shareable: Shareable, record_origin: str):
        # On the training thread: stamp and queue only; the spool's committer parses and writes it.
        self.writer.put((shareable, int(time.time() * 1000)), records_of)  # the log call's time, kept through every retry
        if time.monotonic() - self._last_check > FORWARDER_CHECK:
            self._ensure_forwarder()

    def finalize(self, fl_ctx: FLContext):
        self._ended.set()
        if self.writer:
            status = site_status(self.server_says, self.aborted, self.fatal)
            self.log_info(fl_ctx, f"the run ends {status} at {self.site} (server: {self.server_says or 'no word'}, "
                                  f"aborted: {self.aborted})")
            self.writer.close(status)
            self._ensure_forwarder()
