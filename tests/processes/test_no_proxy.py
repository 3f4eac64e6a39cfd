"""What talks to a site's MLflow from outside it goes straight there, whatever proxy the environment names
(urllib's default sends even 127.0.0.1 through http_proxy): `make status` (stack/status.sh, logged in as the
site's admin), `fedtrack-job`'s probe of a tracking server, and the site's own healthcheck (with the
forwarder's password). Each runs against a real MLflow server, with every proxy variable pointing at a
recording proxy on loopback, which must see nothing."""

import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from support import ROOT, SITES, stop
from test_mlflow_health import SITE_PY, Site  # `fedtrack-mlflow serve` with its secrets, on a free port

pytestmark = pytest.mark.processes

SITE = SITES[0]


class Recorder(BaseHTTPRequestHandler):
    """A would-be proxy: records each request (its line and any login it carries) and answers 502."""

    def record(self):
        self.server.seen.append((self.command, self.path, self.headers.get("Authorization"),
                                 self.headers.get("Proxy-Authorization")))
        self.send_response(502)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_CONNECT = record

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def proxy():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    s = Site(str(tmp_path_factory.mktemp("no-proxy")))
    try:
        yield s.start()
    finally:
        if s.proc:
            stop(s.proc)


def proxied_env(proxy, **extra) -> dict:
    """This environment with every proxy variable naming the recorder, and no exemption from it."""
    url = f"http://127.0.0.1:{proxy.server_address[1]}"
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env.update({v: url for v in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")})
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # python3: the venv's
    return {**env, **extra}


FAKE_COMPOSE = """#!/bin/sh
# `docker compose` as stack/status.sh calls it, for one site whose MLflow is published at {addr}.
case "$*" in
  "ps "*) echo "SERVICE STATUS PORTS" ;;
  "run --rm -T admin fedtrack-admin status") echo "no job" ;;
  "config --services") printf 'mlflow-{site}\\n{site}\\n' ;;
  "port mlflow-{site} 5000") echo "{addr}" ;;
  "exec -T {site} fedtrack-spool status") echo "0 undelivered" ;;
  *) echo "fake compose: unexpected: $*" >&2; exit 99 ;;
esac
"""


def test_make_status_reads_the_site_as_its_admin_without_any_proxy(site, proxy, tmp_path):
    experiment = site.forwarder("experiments/create", {"name": f"status-{SITE}"})["experiment_id"]
    run = site.forwarder("runs/create", {"experiment_id": experiment, "start_time": 1})["run"]["info"]["run_id"]
    site.forwarder("runs/log-metric", {"run_id": run, "key": "train_loss", "value": 0.5, "timestamp": 1, "step": 0})
    secrets = tmp_path / "kits" / "secrets" / SITE / "mlflow"
    secrets.mkdir(parents=True)
    (secrets / "admin_password").write_text(site.password["admin"] + "\n")
    compose = tmp_path / "compose"
    compose.write_text(FAKE_COMPOSE.format(site=SITE, addr=f"127.0.0.1:{site.port}"))
    compose.chmod(0o755)
    before = len(proxy.seen)

    done = subprocess.run([os.path.join(ROOT, "stack", "status.sh")], capture_output=True, text=True, timeout=120,
                          env=proxied_env(proxy, COMPOSE=str(compose), KITS_ROOT=str(tmp_path / "kits")))

    assert proxy.seen[before:] == [], f"make status went through the proxy: {proxy.seen[before:]}"
    line = f"{SITE} http://127.0.0.1:{site.port}: 1 run(s); latest (job ?) RUNNING: 1 train_loss, 0 accuracy"
    assert line in done.stdout, done.stdout + done.stderr


def test_the_jobs_probe_of_a_tracking_server_goes_without_any_proxy(mlflow_servers, proxy):
    code = "import sys; from fedtrack.job.inputs import probe_tracking_server as p; print(p(sys.argv[1]))"
    before = len(proxy.seen)
    done = subprocess.run([sys.executable, "-c", code, mlflow_servers[SITE].uri], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=proxied_env(proxy))
    assert proxy.seen[before:] == [], f"the probe went through the proxy: {proxy.seen[before:]}"
    assert (done.returncode, done.stdout) == (0, "None\n"), done  # None: the server answered


def test_the_sites_healthcheck_sends_the_forwarders_password_without_any_proxy(site, proxy):
    before = len(proxy.seen)
    done = subprocess.run([sys.executable, SITE_PY, "health"], capture_output=True, text=True, timeout=60,
                          env=proxied_env(proxy, **{k: v for k, v in site.env.items() if "proxy" not in k.lower()}))
    assert proxy.seen[before:] == [], f"the healthcheck went through the proxy: {proxy.seen[before:]}"
    assert (done.returncode, done.stderr) == (0, ""), done
