"""The job's round, for the admin: `show_stats(job_id, "server")` carries it (`make wait`).

nvflare 2.9's FedAvg reports no round in the server's job stats (its ScatterAndGather does:
`current_round`, 0-based, and `num_rounds`); this server component reports the same two keys from
FedAvg's round events. Round numbers only, never a metric."""

from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext
from nvflare.app_common.app_constant import AppConstants
from nvflare.app_common.app_event_type import AppEventType
from nvflare.widgets.info_collector import GroupInfoCollector, InfoCollector


class RoundProgress(FLComponent):
    def __init__(self):
        super().__init__()
        self.rounds = {}

    def handle_event(self, event_type: str, fl_ctx: FLContext):
        if event_type == AppEventType.ROUND_STARTED:
            # FedAvg puts the total in the context at its start only: kept from the first round
            total = fl_ctx.get_prop(AppConstants.NUM_ROUNDS) or self.rounds.get("num_rounds")
            self.rounds = {"current_round": fl_ctx.get_prop(AppConstants.CURRENT_ROUND), "num_rounds": total}
        elif event_type == InfoCollector.EVENT_TYPE_GET_STATS and self.rounds:
            collector = fl_ctx.get_prop(InfoCollector.CTX_KEY_STATS_COLLECTOR)
            if isinstance(collector, GroupInfoCollector):
                collector.add_info(group_name="round_progress", info=dict(self.rounds))
