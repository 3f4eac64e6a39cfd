"""Each site's MLflow UI as its researcher sees it, in headless Chromium: the run's charts and system
metrics, and no request to any host but the site's (nothing leaves the machine)."""

import json
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from checks import SITES, site_run
from fedtrack.direct import DIRECT
from stack.mlflow_rest import basic_auth
from support import ROOT

pytestmark = pytest.mark.docker


class RecordingProxy:
    """An HTTP proxy on loopback for the browser: every request is recorded; those to the site's UI
    are passed on with the user's login, all others are refused (nothing leaves the machine)."""

    def __init__(self, target: str, auth: tuple):
        self.requests, self.target = [], target
        header = basic_auth(*auth)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_CONNECT(self):
                proxy.requests.append(("CONNECT", self.path, 403))
                self.send_error(403)

            def do_GET(self):
                url = self.path
                if not url.startswith(proxy.target + "/") and url != proxy.target:
                    proxy.requests.append((self.command, url, 403))
                    self.send_error(403)
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                req = urllib.request.Request(url, data=body, method=self.command,
                                             headers={k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection", "host")})
                req.add_header("Authorization", header)
                try:
                    resp = DIRECT.open(req, timeout=30)  # the login goes to the site, never through a proxy
                except urllib.error.HTTPError as e:
                    resp = e
                data = resp.read()
                proxy.requests.append((self.command, url, resp.status if hasattr(resp, "status") else resp.code))
                self.send_response(resp.status if hasattr(resp, "status") else resp.code)
                for k, v in resp.headers.items():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def chromium(profile, proxy_port: int) -> list:
    """Headless Chromium with a fresh profile, going out only through the proxy on loopback, every
    other name resolving to nothing and its own background services off."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            break
    else:
        pytest.fail("the UI test needs Chromium (apt-get install chromium; .ci/run installs it)")
    return [shutil.which(name), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-extensions", "--no-pings", "--disable-domain-reliability",
            "--disable-features=AutofillServerCommunication,Translate,OptimizationHints,MediaRouter",
            f"--user-data-dir={profile}", f"--proxy-server=http://127.0.0.1:{proxy_port}",
            "--proxy-bypass-list=<-loopback>", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--window-size=1400,900"]


def page_requests(netlog: str, origin: str) -> tuple:
    """(requests the page made, requests Chromium made for itself), from Chromium's net log: the
    page's are its navigation and those whose initiator is its origin; Chromium's own (update
    checks, account lookups, autofill) have no such initiator."""
    with open(netlog) as f:
        text = f.read()
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # a log Chromium did not finish: its constants, then one event per line
        head, _, events = text.partition('"events": [')
        log = {"constants": json.loads(head.rstrip().rstrip(",") + "}")["constants"], "events": []}
        for line in events.splitlines():
            try:
                log["events"].append(json.loads(line.strip().rstrip(",")))
            except json.JSONDecodeError:
                pass  # the line it was writing when it stopped, or the closing bracket
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    page, browser = [], []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] != start_job or "url" not in params:
            continue
        mine = params.get("initiator") == origin or params["url"] == origin + "/"
        (page if mine else browser).append(params["url"])
    return page, browser


SCREENSHOTS = os.path.join(ROOT, "build", "test-output", "ui")  # kept after the run, beside the build (git-ignored)


def browse(pages: list, proxy_port: int, profile: str, netlog: str, timeout: float = 90) -> list:
    """Open each (url, want, screenshot) of pages in turn in one headless Chromium (through the
    login-adding proxy), wait until the page's text holds every string in want (or timeout), save a
    screenshot; each page's text. Driven over Chromium's DevTools protocol (aiohttp's websocket
    client, in the venv with MLflow); Chromium's net log is written to netlog."""
    import asyncio
    import base64

    import aiohttp

    async def run() -> list:
        proc = await asyncio.create_subprocess_exec(
            *chromium(profile, proxy_port), f"--log-net-log={netlog}", "--remote-debugging-port=0", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            port_file = os.path.join(profile, "DevToolsActivePort")
            for _ in range(300):
                if os.path.exists(port_file) and open(port_file).read().strip():
                    break
                await asyncio.sleep(0.1)
            port = open(port_file).read().split()[0]
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    target = next(t for t in await resp.json() if t["type"] == "page")
                async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    ids = iter(range(1, 1_000_000))

                    async def call(method: str, **params) -> dict:
                        n = next(ids)
                        await ws.send_json({"id": n, "method": method, "params": params})
                        async for msg in ws:
                            reply = json.loads(msg.data)
                            if reply.get("id") == n:
                                return reply.get("result", {})
                        raise RuntimeError("Chromium closed its DevTools connection")

                    texts = []
                    for url, want, screenshot in pages:
                        await call("Page.navigate", url=url)
                        deadline, text = time.monotonic() + timeout, ""
                        while time.monotonic() < deadline:
                            got = await call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")
                            text = got.get("result", {}).get("value", "")
                            if all(w in text for w in want):
                                await asyncio.sleep(2)  # the charts draw their lines just after their titles
                                break
                            await asyncio.sleep(1)
                        shot = await call("Page.captureScreenshot", format="png")
                        with open(screenshot, "wb") as f:
                            f.write(base64.b64decode(shot["data"]))
                        texts.append(text)
                    return texts
        finally:
            proc.terminate()  # (not kill: Chromium writes out its net log on the way out; page_requests reads a cut one too)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()

    return asyncio.run(run())


@pytest.mark.parametrize("site", SITES)
def test_the_ui_shows_the_runs_charts_and_calls_no_host_but_its_sites(stack, site, finished_job, tmp_path):
    """What a site's researcher sees, logged in, in one headless Chromium session: the run page in
    MLflow's model-training view shows the training charts and, on its own tab, the site's system
    metrics (screenshots in build/test-output/ui/). Through a recording proxy on loopback that adds the
    user's login; every other name resolves to nothing and the proxy refuses every other host, so
    nothing leaves the machine; the page's own requests (from Chromium's net log) all go to the site."""
    server = stack.mlflow(site)
    run = site_run(server, f"{stack.job_name}-{site}", site, finished_job["job_id"])
    run_id, exp_id = run["info"]["run_id"], run["info"]["experiment_id"]
    assert server.history(run_id, "system/cpu_utilization_percentage"), f"{site}: no system metrics in the run"
    user = f"ui{os.getpid()}"
    made = stack.make("mlflow-user", extra=[f"SITE={site}", f"USER={user}"])
    password = re.search(r"keep it safe\): (\S+)", made.stdout).group(1)
    origin = stack.uri(site)
    os.makedirs(SCREENSHOTS, exist_ok=True)
    tabs = {"model-metrics": ["train_loss", "local_accuracy", "accuracy"],
            "system-metrics": ["cpu_utilization_percentage", "system_memory_usage_megabytes"]}
    pages = [(f"{origin}/#/experiments/{exp_id}/runs/{run_id}/{tab}?workflowType=machine_learning", want,
              os.path.join(SCREENSHOTS, f"{site}-{tab}.png")) for tab, want in tabs.items()]
    proxy = RecordingProxy(origin, (user, password))
    netlog = tmp_path / "netlog.json"
    try:
        texts = browse(pages, proxy.port, str(tmp_path / "profile"), str(netlog))
    finally:
        proxy.close()
    for (url, want, shot), text in zip(pages, texts):
        print(f"\n{site}: {shot}")
        missing = [w for w in want if w not in text]
        assert not missing, f"{site}'s run page does not show {missing}; see {shot}:\n{text[:1500]}"
        assert "Model training" in text and os.path.getsize(shot) > 20000, shot
    page, browser = page_requests(str(netlog), origin)
    print(f"{site}: the pages made {len(page)} requests, all to {origin}; Chromium itself tried "
          f"{sorted({u.split('/')[2] for u in browser})} (refused by the proxy)")
    assert len(page) >= 5 and any("/ajax-api/" in u for u in page), page
    assert [u for u in page if not u.startswith(origin + "/")] == [], "the UI asked another host"
    passed = [(m, u, code) for m, u, code in proxy.requests if code != 403 or u.startswith(origin)]
    assert passed and all(u.startswith(origin) for _, u, _ in passed), proxy.requests
    assert all(code < 400 for _, u, code in passed if "/ajax-api/2.0/mlflow/experiments/search" in u), passed


