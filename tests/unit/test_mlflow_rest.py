"""`make status` and the tests read a site's MLflow logged in as its admin (stack/mlflow_rest.py): the login
goes to that server only, never through a proxy the environment names (urllib's default would use it)."""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from support import ROOT


class Recorder(BaseHTTPRequestHandler):
    """A loopback HTTP server that records each request's target and Authorization header and answers as
    MLflow's experiment search does (an empty page)."""

    def do_POST(self):
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"experiments": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def servers():
    """(the site's server, a would-be proxy), each on a free loopback port, each recording what reaches it."""
    started = []
    for _ in range(2):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        server.seen = []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
    yield started
    for server in started:
        server.shutdown()
        server.server_close()


def test_a_sites_admin_login_goes_to_its_server_and_never_through_a_proxy(servers):
    """As `make status` runs it: a process started with http_proxy (and its kin) set."""
    site, proxy = servers
    proxy_url = f"http://127.0.0.1:{proxy.server_address[1]}"
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env.update({var: proxy_url for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy")})
    code = ("import sys; from stack.mlflow_rest import MLflowREST; "
            "MLflowREST(sys.argv[1], auth=('admin', 's3cret-admin-pw')).experiments()")
    done = subprocess.run([sys.executable, "-c", code, f"http://127.0.0.1:{site.server_address[1]}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert proxy.seen == [], f"the site's admin login went through the proxy: {proxy.seen}"
    assert site.seen == [("/api/2.0/mlflow/experiments/search", "Basic YWRtaW46czNjcmV0LWFkbWluLXB3")], site.seen
