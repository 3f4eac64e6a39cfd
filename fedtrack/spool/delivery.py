"""Delivery: one job's spool to its site's MLflow server, in order, exactly once as MLflow sees it
(see fedtrack.spool)."""

import json
import logging
import math
import os
import shutil
import time

from fedtrack.names import EXPERIMENT_KIND, PASSWORD_FILE_ENV, SITE_URI_ENV, TRAINING, USER_ENV
from fedtrack.spool.store import alive, connect, read_meta, set_meta, transaction

BATCH = 1000  # MLflow's log-batch limits: 1000 metrics, 100 params, 100 tags per request

log = logging.getLogger("fedtrack.spool")


class Delivery:
    """Delivers one job's spool to its MLflow server."""

    def __init__(self, path: str):
        self.path = path
        self.db = connect(path)
        self.client = self.creds = None
        self.failures = 0
        self.next_try = 0.0
        self.last_error = None

    def close(self):
        self.db.close()

    def _client(self, uri: str):
        if self.client is None:
            from mlflow.tracking import MlflowClient

            use_site_credentials(uri)
            self.client = MlflowClient(tracking_uri=uri)
            self.creds = None
        return self.client

    def _run_id(self, meta: dict) -> str:
        if meta.get("run_id"):
            return meta["run_id"]
        client = self._client(meta["tracking_uri"])
        exp = client.get_experiment_by_name(meta["experiment_name"])
        # No artifact location from here: the site's server stores and serves the artifacts.
        exp_id = exp.experiment_id if exp else client.create_experiment(
            meta["experiment_name"], tags={"site": meta["site"], EXPERIMENT_KIND: TRAINING})
        if exp and exp.tags.get(EXPERIMENT_KIND) != TRAINING:  # made by an earlier version, or by hand
            client.set_experiment_tag(exp_id, EXPERIMENT_KIND, TRAINING)
        found = client.search_runs(
            [exp_id], filter_string=f"tags.job_id = '{meta['job_id']}' and tags.site = '{meta['site']}'", max_results=1
        )
        if found:
            run_id = found[0].info.run_id
        else:
            tags = {"site": meta["site"], "job_id": meta["job_id"], "mlflow.runName": meta["run_name"]}
            run_id = client.create_run(exp_id, start_time=int(meta["created_ms"]), tags=tags, run_name=meta["run_name"]).info.run_id
        set_meta(self.db, run_id=run_id)
        return run_id

    def step(self) -> bool:
        """Send what is pending, as far as the server takes it. True when the spool is done."""
        meta = read_meta(self.db)
        if "tracking_uri" not in meta:
            return False  # its writer has not set it up yet (a full volume): nothing spooled, nothing to do
        rows = self.db.execute("SELECT seq, kind, key, value, step, ts FROM records ORDER BY seq LIMIT ?", (BATCH,)).fetchall()
        if not rows:
            if meta.get("closed") == "1":
                return True
            if not alive(meta.get("writer", "0:?")):
                self._end_abandoned()
            return False
        client = self._client(meta["tracking_uri"])
        run_id = self._run_id(meta)
        metrics, params, tags, last, uploaded = [], [], [], None, None
        for seq, kind, key, value, step, ts in rows:
            if kind in ("text", "model", "end") and (metrics or params or tags):
                break  # send the batch before it, then this one
            if kind == "metric":
                metrics.append({"key": key, "value": _json_number(float(value)), "timestamp": ts, "step": step or 0})
            elif kind == "param":
                params.append({"key": key, "value": value})
            elif kind == "tag":
                tags.append({"key": key, "value": value})
            elif kind == "text":
                client.log_text(run_id, value, key)
                last = seq
                break
            elif kind == "model":
                uploaded = self._log_model(client, run_id, key, value)
                last = seq
                break
            elif kind == "end":
                failed, refused = int(meta.get("failed", 0)), int(meta.get("refused", 0))
                rejected = int(meta.get("rejected_models", 0))
                if failed or refused or rejected:  # the run says itself that it is not complete
                    client.set_tag(run_id, "records_lost", f"{failed} failed spool write(s), {refused} refused (spool full)"
                                   + (f", {rejected} model folder(s) refused" if rejected else ""))
                client.set_terminated(run_id, status=value, end_time=ts)
                last = seq
                break
            last = seq
            if len(params) == 100 or len(tags) == 100:
                break
        if metrics or params or tags:
            self._log_batch(meta["tracking_uri"], {"run_id": run_id, "metrics": metrics, "params": params, "tags": tags})
        self._ack(last)
        if uploaded:  # only once acknowledged: until then a retry uploads it again
            shutil.rmtree(uploaded, ignore_errors=True)
        return False

    def _end_abandoned(self):
        """The job died without closing its spool and all it logged is delivered: mark the run FAILED.
        Looked at again under the write lock, so a writer that (re)opened the spool meanwhile is seen."""
        with transaction(self.db):
            meta = read_meta(self.db)
            empty = self.db.execute("SELECT 1 FROM records LIMIT 1").fetchone() is None
            ended = meta.get("closed") != "1" and empty and not alive(meta.get("writer", "0:?"))
            if ended:
                self.db.execute("INSERT INTO records (kind, key, value, step, ts) VALUES ('end', 'status', 'FAILED', NULL, ?)",
                                (int(time.time() * 1000),))
                set_meta(self.db, closed=1)
        if ended:
            log.warning("%s: its job ended without closing it; the run will be marked FAILED", self.path)

    def _log_model(self, client, run_id: str, key: str, value: str):
        """Upload a model folder as the run's artifacts under key (and register it, when asked);
        the folder to remove, or None when it was refused (counted, and acknowledged)."""
        spool_dir = os.path.realpath(os.path.dirname(os.path.abspath(self.path)))
        try:
            spec = json.loads(value)
            folder = os.path.realpath(spec["dir"])
        except (TypeError, ValueError, KeyError):  # unreadable: it must not hold up the records after it
            spec, folder = {"dir": value}, None
        if folder is None:
            why = "the record names no folder"
        elif os.path.commonpath([folder, spool_dir]) != spool_dir or folder == spool_dir:
            why = "it is outside the spool folder"
        elif not os.path.isdir(folder):
            why = "it does not exist"
        elif any(os.path.islink(os.path.join(d, n)) for d, dirs, files in os.walk(folder) for n in dirs + files):
            why = "it holds a link"  # which could point anywhere
        else:
            client.log_artifacts(run_id, folder, artifact_path=key)
            if spec.get("register"):
                self._register(client, run_id, key, spec["register"])
            return folder
        rejected = int(read_meta(self.db).get("rejected_models", 0)) + 1
        set_meta(self.db, rejected_models=rejected)
        log.error("%s: model folder %s not uploaded: %s; counted as lost (%d so far)", self.path, spec["dir"], why, rejected)
        return None

    def _register(self, client, run_id: str, key: str, name: str):
        """A version of registered model `name` from this run's artifacts, once per run. A failure
        leaves the model in the run (to register by hand) and delivery going."""
        source = f"runs:/{run_id}/{key}"
        try:
            if not client.search_registered_models(filter_string=f"name = '{name}'"):
                client.create_registered_model(name)
            if not client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
                client.create_model_version(name, source=source, run_id=run_id)
        except Exception as e:  # noqa: BLE001 - e.g. the forwarder's account may not write the registry
            log.error("%s: could not register %s as model %r (%s); register it by hand", self.path, source, name,
                      describe_failure(e))

    def _log_batch(self, uri: str, body: dict):
        """MLflow's log-batch request, built here from the spool's rows: the client's entity and
        protobuf round trip cost more than the request itself."""
        from mlflow.utils.rest_utils import MlflowHostCreds, http_request_safe

        if self.creds is None:
            self.creds = MlflowHostCreds(
                uri, username=os.environ.get("MLFLOW_TRACKING_USERNAME"), password=os.environ.get("MLFLOW_TRACKING_PASSWORD"),
                ignore_tls_verification=os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true",
                server_cert_path=os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"))
        http_request_safe(self.creds, "/api/2.0/mlflow/runs/log-batch", "POST", json=body)

    def _ack(self, last_seq: int):
        """The server has everything up to last_seq: drop it from the spool."""
        self.db.execute("DELETE FROM records WHERE seq <= ?", (last_seq,))

    def counts(self) -> tuple:
        """(undelivered, refused, failed) records and refused model folders of this job's spool."""
        meta = read_meta(self.db)
        pending = self.db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        return pending, int(meta.get("refused", 0)), int(meta.get("failed", 0)), int(meta.get("rejected_models", 0))


def _json_number(x: float):
    """x as protobuf's JSON mapping writes it: NaN and infinities (a diverged loss) as strings."""
    if math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def check_destination(uri: str):
    """At a deployed site (FEDTRACK_TRACKING_URI set by the site), refuse any server but its own."""
    site_uri = os.environ.get(SITE_URI_ENV)
    if site_uri and uri.rstrip("/") != site_uri.rstrip("/"):
        raise PermissionError(f"this site delivers only to its own MLflow server {site_uri} ({SITE_URI_ENV}), not to {uri}")


def use_site_credentials(uri: str):
    """At a deployed site: refuse any server but the site's own, and log in there as its writer."""
    check_destination(uri)
    if not os.environ.get(SITE_URI_ENV):
        return  # on a host without a site configuration (the simulator): as configured by the job
    password_file = os.environ.get(PASSWORD_FILE_ENV)
    if password_file:
        with open(password_file) as f:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = f.read().strip()
        os.environ["MLFLOW_TRACKING_USERNAME"] = os.environ.get(USER_ENV, "forwarder")


def describe_failure(e: Exception) -> str:
    """One line saying what went wrong and, for a refused login, what to fix."""
    text = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
    if "error code 401" in text or "error code 403" in text:
        code = "401" if "error code 401" in text else "403"
        return (f"the site's MLflow server refused the forwarder's login (HTTP {code}): fix the password of "
                f"{os.environ.get(USER_ENV, 'its account')!r} in {os.environ.get(PASSWORD_FILE_ENV, 'its secret')}; "
                f"records stay spooled until then")
    return f"delivery failed ({text}); records kept, retrying"

