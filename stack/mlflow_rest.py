"""A small stdlib-only client for MLflow's REST API: `make status` and the tests read each site's server with it."""

import base64
import json
import urllib.error
import urllib.parse
import urllib.request

# Every request goes straight to the site's server: a proxy named by http_proxy (urllib's default) would see
# the site's admin login, so none is used, whatever the environment says.
from fedtrack.direct import DIRECT



def basic_auth(user: str, password: str) -> str:
    """The Authorization header value for a login to a site's MLflow."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class MLflowREST:
    def __init__(self, uri: str, timeout: float = 30.0, auth: tuple = None):
        self.uri = uri.rstrip("/")
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json"}
        if auth:  # (user, password): a site's MLflow behind its login
            self.headers["Authorization"] = basic_auth(*auth)

    def _call(self, method: str, path: str, params: dict = None, body: dict = None):
        url = f"{self.uri}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers=self.headers)
        with DIRECT.open(req, timeout=self.timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else {}

    def experiments(self) -> list:
        out, token = [], None
        while True:
            body = {"max_results": 1000, **({"page_token": token} if token else {})}
            page = self._call("POST", "/api/2.0/mlflow/experiments/search", body=body)
            out += page.get("experiments", [])
            token = page.get("next_page_token")
            if not token:
                return out

    def experiment(self, experiment_id: str) -> dict:
        return self._call("GET", "/api/2.0/mlflow/experiments/get", {"experiment_id": experiment_id})["experiment"]

    def experiment_by_name(self, name: str):
        try:
            return self._call("GET", "/api/2.0/mlflow/experiments/get-by-name", {"experiment_name": name})["experiment"]
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def runs(self, experiment_ids: list = None) -> list:
        ids = experiment_ids if experiment_ids is not None else [e["experiment_id"] for e in self.experiments()]
        out, token = [], None
        while ids:
            body = {"experiment_ids": ids, "max_results": 1000, **({"page_token": token} if token else {})}
            page = self._call("POST", "/api/2.0/mlflow/runs/search", body=body)
            out += page.get("runs", [])
            token = page.get("next_page_token")
            if not token:
                break
        return out

    def history(self, run_id: str, key: str) -> list:
        out, token = [], None
        while True:
            params = {"run_id": run_id, "metric_key": key, "max_results": 25000, **({"page_token": token} if token else {})}
            page = self._call("GET", "/api/2.0/mlflow/metrics/get-history", params)
            out += page.get("metrics", [])
            token = page.get("next_page_token")
            if not token:
                return out

    def artifact(self, run: dict, path: str) -> bytes:
        """Download an artifact through the server's artifact proxy (mlflow-artifacts:/...)."""
        artifact_uri = run["info"]["artifact_uri"]
        prefix = "mlflow-artifacts:/"
        if not artifact_uri.startswith(prefix):
            raise AssertionError(f"artifacts of run {run['info']['run_id']} are not served by the server: {artifact_uri}")
        rel = artifact_uri[len(prefix) :].strip("/")
        url = f"{self.uri}/api/2.0/mlflow-artifacts/artifacts/{rel}/{path}"
        with DIRECT.open(urllib.request.Request(url, headers=self.headers), timeout=self.timeout) as resp:
            return resp.read()


def tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def params(run: dict) -> dict:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}
