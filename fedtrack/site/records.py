"""A site's analytics events as spool records (kind, key, value, step, ts): what the receiver's
spool writer parses on its own thread."""

from nvflare.apis.analytix import AnalyticsData, AnalyticsDataType, LogWriterName
from nvflare.apis.dxo import from_shareable

RECORD_KINDS = {
    AnalyticsDataType.METRIC: "metric", AnalyticsDataType.METRICS: "metric",
    AnalyticsDataType.PARAMETER: "param", AnalyticsDataType.PARAMETERS: "param",
    AnalyticsDataType.TAG: "tag", AnalyticsDataType.TAGS: "tag",
}


def records_of(item) -> list:
    """The spool records (kind, key, value, step, ts) of one analytics event for MLflow."""
    shareable, ts = item
    data = AnalyticsData.from_dxo(from_shareable(shareable), receiver=LogWriterName.MLFLOW)
    if not data:
        return []
    t, step = data.data_type, data.step or 0
    if t == AnalyticsDataType.TEXT:
        return [("text", data.kwargs["path"], data.value, None, ts)] if data.kwargs.get("path") else []
    if t == AnalyticsDataType.MODEL:  # key: the artifact path; value: the folder the forwarder uploads (fedtrack.spool.delivery)
        return [("model", data.tag, {"dir": str(data.value), "register": data.kwargs.get("registered_model_name") or ""},
                 None, ts)]
    kind = RECORD_KINDS.get(t)
    if kind is None:
        return []
    values = data.value if t in (AnalyticsDataType.METRICS, AnalyticsDataType.PARAMETERS, AnalyticsDataType.TAGS) \
        else {data.tag: data.value}
    if kind == "metric":
        return [("metric", k, float(v), step, ts) for k, v in values.items()]
    return [(kind, k, str(v), None, ts) for k, v in values.items()]
