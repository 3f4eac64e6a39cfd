"""Every job ends in a true state, at the server and in each site's MLflow run.

- `RunOutcome` (a server component of the job): when the server's run ends it tells each site
  how (FINISHED: the workflow ran to its end; FAILED: a fatal error; KILLED: the run was aborted),
  before nvflare asks the sites to end the run. Only this word travels, never a metric. It also
  fails the run when a site has lost its part of the job (its process died, its host restarted),
  instead of leaving FedAvg waiting for that site's result forever: each site's receiver says
  "alive" ALIVE_PER_LOST times per `lost_after` seconds, and a site silent that long has lost it.
  (nvflare's own dead-job report does not come for a client that restarted: it re-registers
  under a new token that the job does not know.)
- `AbandonUnfinishedJobs` (a system component of the server, installed by fedtrack.policy):
  nvflare 2.9 cannot resume a job after a server restart and leaves it RUNNING forever; at the
  server's start, every job still marked RUNNING or DISPATCHED is marked FINISHED:ABANDONED,
  with the reason in its meta (END_REASON), so waits end and new jobs can be submitted.

Each site's receiver (fedtrack.site.receiver) turns what it saw into its run's final status (`site_status`).
"""

import threading
import time

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply

from fedtrack.names import ALIVE_PER_LOST, ALIVE_TOPIC, END_REASON, LOST_AFTER, OUTCOME_TOPIC, STATUS_KEY

RESTART_REASON = "the FL server restarted while the job ran; nvflare 2.9 cannot resume it"
NOTIFY_TIMEOUT = 10.0  # seconds the server waits for the sites to take the outcome


class RunOutcome(FLComponent):
    def __init__(self, lost_after: float = LOST_AFTER):
        super().__init__()
        self.lost_after = lost_after
        self.fatal = None
        self.sites = set()
        self.heard = {}  # site -> monotonic time of its last "alive"
        self.ended = threading.Event()

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == EventType.START_RUN:
            engine = fl_ctx.get_engine()
            self.sites = {c.name for c in (engine.get_participating_clients() or {}).values()}
            engine.register_aux_message_handler(ALIVE_TOPIC, self._alive)
            threading.Thread(target=self._watch, args=(engine,), name="site_liveness", daemon=True).start()
        elif event_type == EventType.FATAL_SYSTEM_ERROR:
            self.fatal = fl_ctx.get_prop(FLContextKey.EVENT_DATA, "fatal error")
        elif event_type == EventType.CLIENT_DISCONNECTED:
            self._lost(fl_ctx.get_prop(FLContextKey.DISCONNECTED_CLIENT_NAME), "nvflare deems it disconnected", fl_ctx)
        elif event_type == EventType.ABOUT_TO_END_RUN:
            self.ended.set()
            self._notify(fl_ctx)

    def _alive(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        self.heard[fl_ctx.get_peer_context().get_identity_name()] = time.monotonic()
        return make_reply(ReturnCode.OK)

    def _watch(self, engine):
        while not self.ended.wait(self.lost_after / ALIVE_PER_LOST / 2):
            now = time.monotonic()
            for site, last in list(self.heard.items()):
                if now - last > self.lost_after:
                    with engine.new_context() as fl_ctx:
                        self._lost(site, f"its job process has been silent for {now - last:.0f} s", fl_ctx)
                    return

    def _lost(self, site: str, why: str, fl_ctx: FLContext):
        if site in self.sites and not self.fatal and not self.ended.is_set():
            self.system_panic(f"site {site} lost its part of the job ({why}); the round cannot complete", fl_ctx)

    def outcome(self, fl_ctx: FLContext) -> str:
        if self.fatal:
            return "FAILED"
        signal = fl_ctx.get_prop(ReservedKey.RUN_ABORT_SIGNAL)
        return "KILLED" if signal is not None and signal.triggered else "FINISHED"

    def _notify(self, fl_ctx: FLContext):
        status = self.outcome(fl_ctx)
        request = Shareable()
        request[STATUS_KEY] = status
        self.log_info(fl_ctx, f"the run ends {status}" + (f" ({self.fatal})" if self.fatal else "") + "; telling the sites")
        try:
            fl_ctx.get_engine().send_aux_request(
                targets=None, topic=OUTCOME_TOPIC, request=request, timeout=NOTIFY_TIMEOUT, fl_ctx=fl_ctx, optional=True
            )
        except Exception as e:  # noqa: BLE001 - a site that cannot be told ends its run by its own rule
            self.log_warning(fl_ctx, f"could not tell the sites the run's outcome: {e}")


class AbandonUnfinishedJobs(FLComponent):
    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type != EventType.SYSTEM_START:
            return
        from nvflare.apis.job_def import RunStatus
        from nvflare.apis.fl_constant import SystemComponents

        engine = fl_ctx.get_engine()
        jobs = engine.get_component(SystemComponents.JOB_MANAGER)
        for job in jobs.get_jobs_by_status([RunStatus.RUNNING, RunStatus.DISPATCHED], fl_ctx):
            try:
                jobs.update_meta(job.job_id, {END_REASON: RESTART_REASON}, fl_ctx)
                jobs.set_status(job.job_id, RunStatus.ABANDONED, fl_ctx)
                self.log_warning(fl_ctx, f"job {job.job_id} marked {RunStatus.ABANDONED.value}: {RESTART_REASON}")
            except Exception as e:  # noqa: BLE001 - one job's store error must not keep the server down
                self.log_error(fl_ctx, f"could not mark job {job.job_id} abandoned: {e}")
