"""The site's mandatory filter on every task result it sends (local/privacy.json: nvflare applies a
site's privacy filters first, and a job can neither remove nor replace them).

Whatever the job's code put in a result, only model weights and the step count leave the site: a
weights result keeps its arrays and the meta keys nvflare needs to read them; a metrics result (the
final "validate" task) leaves empty; every other kind, meta key, header or top-level entry is dropped.
"""

from nvflare.apis.dxo import DXO, DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable

WEIGHTS = (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF)
# Meta that says how to read the weights and which round they are, never a measurement.
META = {FLMetaKey.NUM_STEPS_CURRENT_ROUND, FLMetaKey.PROCESSED_ALGORITHM, FLMetaKey.PROCESSED_KEYS,
        FLMetaKey.FILTER_HISTORY}
# Headers nvflare routes by (its reserved "__...__" keys) and the round counters.
HEADERS = {FLMetaKey.CURRENT_ROUND, FLMetaKey.START_ROUND, FLMetaKey.TOTAL_ROUNDS, "num_rounds", FLMetaKey.JOB_ID,
           FLMetaKey.SITE_NAME, "_validate_type"}


def is_array(value) -> bool:
    """A tensor or an array of numbers (what a model's state dict holds), never a lone Python number."""
    return type(value).__module__.split(".")[0] in ("numpy", "torch") and hasattr(value, "shape") and len(value.shape) > 0


APPLIED = "this site's privacy policy filters every task result: only weights and the step count leave"


class WeightsOnly(Filter):
    def __init__(self):
        super().__init__()
        self.said = False

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if not self.said:  # once per job process: the site's log shows its policy was in force
            self.log_info(fl_ctx, APPLIED)
            self.said = True
        headers = shareable.get(ReservedHeaderKey.HEADERS) or {}
        out = Shareable()
        for key, value in headers.items():
            if (key.startswith("__") and key.endswith("__")) or key in HEADERS:
                out.set_header(key, value)
        try:
            dxo = from_shareable(shareable)
        except Exception:  # noqa: BLE001 - no DXO (an error reply): the headers carry its return code
            return out
        if dxo.data_kind in WEIGHTS:
            data = {k: v for k, v in (dxo.data or {}).items() if isinstance(k, str) and is_array(v)}
            kept = DXO(dxo.data_kind, data=data, meta={k: v for k, v in dxo.meta.items() if k in META})
        else:  # metrics, or anything else a job's code could name: nothing of it leaves
            kept = DXO(DataKind.METRICS, data={}, meta={})
        dropped = sorted(set(dxo.meta) - set(kept.meta)) + sorted(set(dxo.data or {}) - set(kept.data))
        if dropped:
            self.log_warning(fl_ctx, f"this site's privacy policy kept {dropped} out of a task result")
        kept.update_shareable(out)
        return out
