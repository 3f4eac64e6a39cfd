"""A site's MLflow (`fedtrack-mlflow serve`, docker/mlflow-site.py, run here as in its container on 127.0.0.1)
answers credentialed cross-origin requests from its own UI's origin only: http://127.0.0.1:<UI port> and
http://localhost:<UI port>. MLflow by itself also answers every other loopback origin, so a page on another
port of the host could read (and write) the site's runs with a logged-in user's login."""

import http.client
import json

import pytest

from support import free_port, stop
from test_mlflow_health import Site  # `fedtrack-mlflow serve` with its secrets, on a free port

pytestmark = pytest.mark.processes

SEARCH = "/api/2.0/mlflow/experiments/search"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site(str(tmp_path_factory.mktemp("cors")))
    try:
        yield s.start()
    finally:
        if s.proc:
            stop(s.proc)


def request(site: Site, method: str, path: str, origin: str, headers: dict = None, body: dict = None):
    """(status, headers, body) of one request as a browser on the UI's port sends it: Host is the UI's
    address (the server's host check admits it), Origin the page's."""
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=30)
    try:
        ui = f"127.0.0.1:{site.env['UI_PORT']}"
        sent = {"Host": ui, "Origin": origin, **(headers or {})}
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=sent)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def preflight(site: Site, origin: str):
    return request(site, "OPTIONS", SEARCH, origin, {
        "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"})


def login(site: Site) -> dict:
    return {"Authorization": site.admin.headers["Authorization"], "Content-Type": "application/json"}


def ui_origins(site: Site) -> list:
    return [f"http://127.0.0.1:{site.env['UI_PORT']}", f"http://localhost:{site.env['UI_PORT']}"]


def other_origins(site: Site) -> list:
    """Pages a browser may hold open besides the site's UI: other loopback ports, IPv6 loopback, elsewhere."""
    other = free_port()
    return [f"http://localhost:{other}", f"http://127.0.0.1:{other}", f"http://127.0.0.1:{site.port}",
            f"http://[::1]:{site.env['UI_PORT']}", f"https://127.0.0.1:{site.env['UI_PORT']}", "http://attacker.example"]


def test_the_sites_ui_origin_gets_credentialed_cors(site):
    for origin in ui_origins(site):
        status, headers, _ = preflight(site, origin)
        assert status in (200, 204), (origin, status, headers)
        assert headers.get("access-control-allow-origin") == origin, (origin, headers)
        assert headers.get("access-control-allow-credentials") == "true", (origin, headers)
        status, headers, body = request(site, "POST", SEARCH, origin, login(site), {"max_results": 1})
        assert status == 200, (origin, status, body)
        assert headers.get("access-control-allow-origin") == origin, (origin, headers)


def test_no_other_origin_may_read_or_write_with_a_users_login(site):
    for origin in other_origins(site):
        # The browser's preflight for a credentialed POST: refused, so the page's request is never sent.
        status, headers, body = preflight(site, origin)
        assert status == 400 and "access-control-allow-origin" not in headers, (origin, status, headers, body)
        # A read the browser sends without a preflight: the answer lacks the headers that would let the page read it.
        status, headers, _ = request(site, "GET", f"{SEARCH}?max_results=1", origin, login(site))
        assert "access-control-allow-origin" not in headers, (origin, status, headers)
        # A write sent anyway (a form, or a client ignoring CORS) with the login: refused, nothing made.
        name = f"cross-origin-{free_port()}"
        status, _, body = request(site, "POST", "/api/2.0/mlflow/experiments/create", origin, login(site), {"name": name})
        assert status == 403, (origin, status, body)
        assert site.admin.experiment_by_name(name) is None, origin
