"""The job's round, for the admin: `show_stats(job_id, "server")` carries it (`make wait`).

nvflare 2.9's FedAvg reports no round in the server's job stats (its ScatterAndGather does:
`current_round`, 0-based, and `num_rounds`); this server component reports the same two keys from
FedAvg's round events. Round numbers only, never a metric.

In the server's job process it also drops one warning: CrossSiteModelEval (the final model's
evaluation, recipe.py) has no results formatter to report and says so at every `show_stats`, that is
each second of `make wait`, for the whole job."""

import logging

from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.widgets.info_collector import GroupInfoCollector, InfoCollector


NO_FORMATTER = "No formatter provided. Validation results can't be printed."


class RoundProgress(FLComponent):
    def __init__(self):
        super().__init__()
        self.rounds = {}
        cse = logging.getLogger("nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval")
        if not any(isinstance(f, _Drop) for f in cse.filters):
            cse.addFilter(_Drop(NO_FORMATTER))

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == AppEventType.ROUND_STARTED:
            # FedAvg puts the total in the context at its start only: kept from the first round
            total = fl_ctx.get_prop(AppConstants.NUM_ROUNDS) or self.rounds.get("num_rounds")
            self.rounds = {"current_round": fl_ctx.get_prop(AppConstants.CURRENT_ROUND), "num_rounds": total}
        elif event_type == InfoCollector.EVENT_TYPE_GET_STATS and self.rounds:
            collector = fl_ctx.get_prop(InfoCollector.CTX_KEY_STATS_COLLECTOR)
            if isinstance(collector, GroupInfoCollector):
                collector.add_info(group_name="round_progress", info=dict(self.rounds))


class _Drop(logging.Filter):
    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return self.message not in record.getMessage()
