"""A site trusts no one it does not have to, on the real stack: the admin gets no shell and ships no
code, nothing it can obtain holds a metric value, a foreign or renamed client is refused, each
site's MLflow needs a login, nothing is in an image layer or in git that is secret, every container
is hardened and routes out only where the README says, and the UI calls no one but its site."""

import glob
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from checks import SITES, check_site_run, metric_strings, site_run
from fedtrack.pins import pin
from stack.mlflow_rest import basic_auth
from support import ROOT

pytestmark = pytest.mark.docker

SERVICES = ("server", *SITES, *(f"mlflow-{s}" for s in SITES))
FLARE_IMAGE = f"fedtrack/flare:{pin('nvflare')}"
MLFLOW_IMAGE = f"fedtrack/mlflow:{pin('mlflow')}"


@pytest.fixture(scope="module")
def finished_job(stack):
    """The stack's first job, finished, and every metric value its sites logged."""
    stack.make("wait", timeout=1800, check=False)  # whatever the stack still runs ends first
    histories = []
    for site in SITES:
        server = stack.mlflow(site)
        run = site_run(server, f"{stack.job_name}-{site}", site, stack.job_ids[0])
        histories.append(check_site_run(server, run, site, stack.rounds))
    return {"job_id": stack.job_ids[0], "needles": metric_strings(histories)}


# --------------------------------------------------------------------------- the admin: no shell, no code


def test_the_admins_shell_commands_are_refused_at_every_site(stack):
    code = """
from nvflare.fuel.flare_api.api_spec import AuthorizationError
for site in sys.argv[1:]:
    for name, call in (("ls", lambda: sess.ls_target(site)), ("cat", lambda: sess.cat_target(site, file="log.txt")),
                       ("tail", lambda: sess.tail_target_log(site)), ("grep", lambda: sess.grep_target(site, pattern="accuracy", file="log.txt")),
                       ("head", lambda: sess.head_target_log(site))):
        try:
            out = call()
            print(site, name, "ALLOWED", repr(str(out)[:200]))
        except AuthorizationError:
            print(site, name, "refused")
"""
    out = stack.admin_python(code, *SITES).split("\n")
    results = [line for line in out if line.strip()]
    assert len(results) == 5 * len(SITES), out
    assert all(line.endswith("refused") for line in results), results


def test_every_participants_policy_refuses_custom_code_and_shell_to_every_role(stack):
    """Each participant's effective local policy, evaluated by nvflare's own authorizer."""
    code = """
import json
from nvflare.fuel.sec.authz import AuthorizationService, AuthzContext, Person
from nvflare.security.security import FLAuthorizer
with open("/workspace/local/authorization.json") as f:
    policy = json.load(f)
authz = FLAuthorizer("this-site", policy)
for role in ("project_admin", "org_admin", "lead", "member"):
    for right in ("byoc", "shell_commands", "operate"):
        for org in ("this-site", "submitter"):
            user = Person("someone", org, role)
            ok, err = authz.authorize(AuthzContext(right=right, user=user, submitter=user))
            print(role, right, org, "ALLOWED" if ok else "refused")
"""
    for service in ("server", *SITES):
        result = stack.exec_python(service, code)
        lines = [l for l in result.stdout.splitlines() if l.strip()]
        assert len(lines) == 24 and all(l.endswith("refused") for l in lines), f"{service}: {result.stdout}{result.stderr}"


def test_a_job_with_custom_code_is_refused_by_each_site_and_runs_nowhere(stack, finished_job):
    """The config-only job plus custom code in each site's app (the server's app stays clean, so the
    server deploys it and each site decides for itself): each site refuses it."""
    code = """
import os, subprocess, tempfile, time
tmp = tempfile.mkdtemp()
subprocess.run(["fedtrack-job", "--env", "export", "--export-dir", tmp, "--name", "byoc-probe"],
               check=True, capture_output=True)
job = os.path.join(tmp, "byoc-probe")
for site in sys.argv[1:]:  # custom code in each site's app, as a BYOC job carries it
    app = "app_" + site
    os.makedirs(os.path.join(job, app, "custom"), exist_ok=True)
    with open(os.path.join(job, app, "custom", "probe.py"), "w") as f:
        f.write("open('/workspace/BYOC_RAN', 'w').write('ran')\\n")
job_id = sess.submit_job(job)
for _ in range(100):
    status = sess.get_job_status(job_id)
    if status and status.startswith("FINISHED"):
        break
    time.sleep(3)
print("STATUS", status)
print("DETAIL", json.dumps(sess.get_job_meta(job_id).get("job_deploy_detail")))
"""
    out = stack.admin_python(code, *SITES)
    assert "STATUS FINISHED:FAILED_TO_RUN" in out, out
    detail = json.loads(out.split("DETAIL ", 1)[1].splitlines()[0])
    for site in SITES:
        assert f"{site}: NVFLARE_ERROR: BYOC not permitted" in detail, detail
    for service in ("server", *SITES):
        assert stack.compose("exec", "-T", service, "test", "-e", "/workspace/BYOC_RAN", check=False).returncode == 1


def test_nothing_the_admin_can_obtain_holds_a_metric_value(stack, finished_job):
    needles = finished_job["needles"]
    assert len(needles) > 20
    code = """
import os, tempfile
job_id = sys.argv[1]
out = tempfile.mkdtemp()
path = sess.download_job_result(job_id, out)
for root, _, files in os.walk(out):
    for f in files:
        with open(os.path.join(root, f), "rb") as fh:
            sys.stdout.write("FILE " + os.path.join(root, f) + "\\n" + fh.read().decode("utf-8", "ignore") + "\\n")
print("META", json.dumps(sess.get_job_meta(job_id)))
print("JOBS", json.dumps(sess.list_jobs(detailed=True), default=str))
print("SYSINFO", sess.get_system_info())
for call in (lambda: sess.get_job_logs(job_id), lambda: sess.show_errors(job_id, "client"),
             lambda: sess.show_stats(job_id, "client")):
    try:
        print("OUT", json.dumps(call(), default=str))
    except Exception as e:
        print("REFUSED", type(e).__name__)
"""
    out = stack.admin_python(code, finished_job["job_id"])
    assert "FILE " in out, out[-2000:]  # the download worked and was read
    leaked = sorted(n for n in needles if n in out)
    assert not leaked, f"metric values the admin could obtain: {leaked[:5]}"
    # Every log a site keeps (what FLARE's log commands would serve) and its container's log.
    site_logs = stack.compose("logs", "--no-color", *SITES).stdout
    for site in SITES:
        site_logs += stack.compose("exec", "-T", site, "sh", "-c",
                                   "find /workspace -name '*log*.txt*' -type f -exec cat {} +").stdout
    assert "trained" in site_logs, "the sites' progress lines are missing from their logs"
    leaked = [n for n in needles if n in site_logs]
    assert not leaked, f"a site's log holds metric values: {leaked[:5]}"


# --------------------------------------------------------------------------- foreign and renamed clients


def registered_clients(stack) -> set:
    out = stack.admin("fedtrack-admin", "status").stdout
    line = next(l for l in out.splitlines() if l.startswith("clients: "))
    return set(line[len("clients: "):].split(", "))


def run_rogue_client(stack, kit: str, name: str) -> str:
    """Start a client container from `kit` on the stack's FL network; return its logs after 40 s."""
    cid = subprocess.run(
        ["docker", "run", "-d", "--name", name, "--network", f"{stack.name}_fl", "--read-only", "--tmpfs", "/tmp",
         "--tmpfs", "/workspace:uid=10001,gid=10001", "-v", f"{kit}:/kit:ro", "--entrypoint", "fedtrack-entrypoint",
         FLARE_IMAGE],
        capture_output=True, text=True, check=True).stdout.strip()
    try:
        time.sleep(40)
        return subprocess.run(["docker", "logs", cid], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def test_a_client_from_another_provisioning_is_refused(stack, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    renamed = SITES[-1]  # in the other provisioning this site is site-9, a name the project lacks
    project = open(os.path.join(ROOT, "provision", "project.yml")).read().replace(f"name: {renamed}", "name: site-9")
    (other / "project.yml").write_text(project)
    subprocess.run(["docker", "run", "--rm", "--network", "none", "--user", "0:0", "-v", f"{other}:/w",
                    "--entrypoint", "bash", FLARE_IMAGE, "-c",
                    "cd /w && nvflare provision -p project.yml -w ws --force >/dev/null && chown -R 10001 ws"],
                   check=True, capture_output=True)
    kit = other / "ws" / "fedtrack" / "prod_00" / "site-9"
    logs = run_rogue_client(stack, str(kit), f"{stack.name}-rogue-ca")
    assert "site-9" not in registered_clients(stack), logs[-3000:]
    assert "Successfully registered client" not in logs, logs[-3000:]
    assert registered_clients(stack) >= set(SITES)


def test_a_sites_certificate_under_another_name_is_refused(stack, tmp_path):
    site = SITES[0]
    kit = tmp_path / "renamed"
    shutil.copytree(os.path.join(stack.kits, "fedtrack", "prod_00", site), kit, symlinks=True)
    sub_start = kit / "startup" / "sub_start.sh"
    sub_start.write_text(sub_start.read_text().replace(f"uid={site}", "uid=site-9"))
    subprocess.run(["chown", "-R", "10001", str(kit)], check=True)
    logs = run_rogue_client(stack, str(kit), f"{stack.name}-rogue-name")
    assert "uid=site-9" in logs, logs[-2000:]  # it did try, as site-9
    assert "site-9" not in registered_clients(stack), logs[-3000:]
    assert "Successfully registered client" not in logs, logs[-3000:]


# --------------------------------------------------------------------------- each site's MLflow: a login


def status_of(url: str, auth: tuple = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", basic_auth(*auth))
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.parametrize("site", SITES)
def test_each_mlflow_needs_a_login_the_forwarder_writes_and_a_ui_account_reads(stack, site, finished_job):
    uri = stack.uri(site)
    assert status_of(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1") == 401
    assert status_of(f"{uri}/") == 401  # the UI page
    assert status_of(f"{uri}/ajax-api/2.0/mlflow/experiments/search?max_results=1") == 401
    assert status_of(f"{uri}/", ("admin", "not-the-password")) == 401
    # The forwarder's account writes (its runs are the site's runs; here one more write, explicitly).
    forwarder = stack.mlflow(site, "forwarder", stack.secret(site, "forwarder_password"))
    exp = forwarder._call("POST", "/api/2.0/mlflow/experiments/create", body={"name": f"write-check-{os.getpid()}"})
    assert exp["experiment_id"]
    # A person's UI account, made with the make target, reads the site's runs and cannot write.
    user = f"alice{os.getpid()}"
    made = stack.make("mlflow-user", check=False, extra=[f"SITE={site}", f"USER={user}"])
    assert made.returncode == 0, made.stdout + made.stderr
    password = re.search(r"password \(shown once, keep it safe\): (\S+)", made.stdout).group(1)
    alice = stack.mlflow(site, user, password)
    assert any(r["info"]["status"] == "FINISHED" for r in alice.runs())
    assert status_of(f"{uri}/", (user, password)) == 200
    run_id = next(r["info"]["run_id"] for r in alice.runs() if r["info"]["status"] == "FINISHED")
    with pytest.raises(urllib.error.HTTPError) as refused:
        alice._call("POST", "/api/2.0/mlflow/runs/log-metric",
                    body={"run_id": run_id, "key": "tampered", "value": 1.0, "timestamp": 0, "step": 0})
    assert refused.value.code == 403
    # Bad input: the same user again, an unknown site, no user name: one line each, nothing made.
    again = stack.make("mlflow-user", check=False, extra=[f"SITE={site}", f"USER={user}"])
    assert again.returncode != 0 and f"error: user '{user}' already exists" in again.stderr, again.stderr
    for extra, expected in ((["SITE=site-9", f"USER={user}x"], "error: unknown site 'site-9'"),
                            ([f"SITE={site}"], "error: name the account")):
        bad = stack.make("mlflow-user", check=False, extra=extra)
        lines = [l for l in bad.stderr.splitlines() if l.startswith("error:")]
        assert bad.returncode != 0 and len(lines) == 1 and expected in lines[0], bad.stderr


def test_mlflow_phones_no_one_and_exposes_no_gateway(stack):
    for site in SITES:
        result = stack.compose("exec", "-T", f"mlflow-{site}", "sh", "-c",
                               "echo $MLFLOW_DISABLE_TELEMETRY $DO_NOT_TRACK $MLFLOW_ENABLE_AI_GATEWAY "
                               "$MLFLOW_SERVER_ENABLE_JOB_EXECUTION")
        assert result.stdout.split() == ["true", "true", "false", "false"], result.stdout
        info = stack.mlflow(site)._call("GET", "/ajax-api/3.0/mlflow/server-info")
        assert info["features_enabled"]["gateway"] is False, info
        telemetry = stack.mlflow(site)._call("GET", "/ajax-api/3.0/mlflow/ui-telemetry")
        assert telemetry.get("disable_ui_telemetry") is True, telemetry
    for site in SITES:
        result = stack.compose("exec", "-T", site, "sh", "-c", "echo $MLFLOW_DISABLE_TELEMETRY $DO_NOT_TRACK")
        assert result.stdout.split() == ["true", "true"], result.stdout


# --------------------------------------------------------------------------- secrets, hardening, routes


def secret_values(stack) -> set:
    """Every secret the deployment holds: MLflow passwords and keys, each private key's PEM body."""
    out = set()
    for path in glob.glob(os.path.join(stack.kits, "secrets", "*", "*", "*")):
        with open(path) as f:
            out.add(f.read().strip())
    keys = glob.glob(os.path.join(stack.kits, "**", "*.key"), recursive=True)
    assert len(keys) >= 4, keys
    for path in keys:
        with open(path) as f:
            body = [l for l in f.read().splitlines() if l and not l.startswith("-----")]
        out.update(body[1:3])  # two full base64 lines of each key
    with open(os.path.join(stack.ca, "cert.json")) as f:
        ca_key = json.load(f)["root_pri_key"]
    out.update([l for l in ca_key.splitlines() if l and not l.startswith("-----")][1:3])
    return {v for v in out if len(v) >= 20}


def test_no_secret_in_any_image_layer_or_in_git(stack, tmp_path):
    needles = secret_values(stack)
    assert len(needles) > 10
    patterns = tmp_path / "patterns"
    patterns.write_text("\n".join(sorted(needles)) + "\n")
    save = subprocess.Popen(["docker", "save", FLARE_IMAGE, MLFLOW_IMAGE], stdout=subprocess.PIPE)
    found = subprocess.run(["grep", "-a", "-o", "-F", "-f", str(patterns)], stdin=save.stdout, capture_output=True)
    save.stdout.close()
    assert save.wait() == 0
    assert found.stdout == b"", "a secret is in an image layer"
    tracked = subprocess.run(["git", "grep", "-I", "-l", "-F", "-f", str(patterns)], cwd=ROOT, capture_output=True, text=True)
    assert tracked.stdout == "", f"a secret is in a tracked file: {tracked.stdout}"
    # The root CA's key is not beside the kits; every private key is 0600.
    assert not glob.glob(os.path.join(stack.kits, "**", "cert.json"), recursive=True)
    for path in glob.glob(os.path.join(stack.kits, "**", "*.key"), recursive=True):
        assert oct(os.stat(path).st_mode & 0o777) == "0o600", path


def container(stack, service: str) -> dict:
    cid = stack.compose("ps", "-q", service).stdout.strip()
    return json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True, text=True, check=True).stdout)[0]


@pytest.mark.parametrize("service", SERVICES)
def test_every_container_is_hardened(stack, service):
    c = container(stack, service)
    host = c["HostConfig"]
    assert host["CapDrop"] == ["ALL"] and not host.get("CapAdd"), host["CapDrop"]
    assert "no-new-privileges:true" in (host.get("SecurityOpt") or [])
    assert host["ReadonlyRootfs"] is True
    assert host["Memory"] > 0 and host["PidsLimit"] and host["PidsLimit"] > 0
    assert host["LogConfig"]["Type"] == "json-file" and host["LogConfig"]["Config"].get("max-size")
    assert c["Config"]["User"] not in ("", "0", "root", "0:0"), c["Config"]["User"]
    print(f"\n{service}: memory limit {host['Memory'] // 2**20} MiB, pids {host['PidsLimit']}")


def default_route(stack, service: str) -> bool:
    table = stack.compose("exec", "-T", service, "cat", "/proc/net/route").stdout.splitlines()[1:]
    return any(line.split()[1] == "00000000" for line in table if line.split())


def routed_networks(stack, service: str) -> list:
    """The container's networks that lead off the host (Docker's `internal` unset)."""
    out = []
    for net in container(stack, service)["NetworkSettings"]["Networks"]:
        internal = subprocess.run(["docker", "network", "inspect", net, "-f", "{{.Internal}}"],
                                  capture_output=True, text=True, check=True).stdout.strip()
        if internal != "true":
            out.append(net)
    return out


def test_only_the_mlflow_servers_have_a_route_out_and_the_readme_says_why(stack):
    """Docker 20.10 writes a default route into every container, also on internal networks, whose
    traffic it then drops at the bridge: so the proof is each network's `internal` setting."""
    for service in SERVICES:
        routed = routed_networks(stack, service)
        print(f"\n{service}: default route in its table: {default_route(stack, service)}; routed networks: {routed}")
        site = service[len("mlflow-"):] if service.startswith("mlflow-") else None
        assert routed == ([f"{stack.name}_{site}-ui"] if site else []), f"{service} is on routed networks {routed}"
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert "default route" in readme and "internal" in readme


# --------------------------------------------------------------------------- the UI calls no one else


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
                    resp = urllib.request.urlopen(req, timeout=30)
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
        log = json.load(f)
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    page, browser = [], []
    for event in log["events"]:
        params = event.get("params") or {}
        if event["type"] != start_job or "url" not in params:
            continue
        mine = params.get("initiator") == origin or params["url"] == origin + "/"
        (page if mine else browser).append(params["url"])
    return page, browser


@pytest.mark.parametrize("site", SITES)
def test_the_ui_logged_in_calls_no_host_but_its_sites(stack, site, finished_job, tmp_path):
    """Headless Chromium opens the site's UI through a recording proxy on loopback that adds the
    user's login; every other name resolves to nothing and the proxy refuses every other host, so
    nothing leaves the machine. The page's own requests (from the net log) all go to the site."""
    user = f"ui{os.getpid()}"
    made = stack.make("mlflow-user", extra=[f"SITE={site}", f"USER={user}"])
    password = re.search(r"keep it safe\): (\S+)", made.stdout).group(1)
    origin = stack.uri(site)
    proxy = RecordingProxy(origin, (user, password))
    netlog = tmp_path / "netlog.json"
    try:
        result = subprocess.run(
            [*chromium(tmp_path / "profile", proxy.port), f"--log-net-log={netlog}", "--virtual-time-budget=20000",
             f"--screenshot={tmp_path / 'ui.png'}", f"{origin}/"],
            capture_output=True, text=True, timeout=180)
    finally:
        proxy.close()
    page, browser = page_requests(str(netlog), origin)
    print(f"\n{site}: the page made {len(page)} requests, all to {origin}; Chromium itself tried "
          f"{sorted({u.split('/')[2] for u in browser})} (refused by the proxy)")
    assert len(page) >= 5 and any("/ajax-api/" in u for u in page), (page, result.stderr[-2000:])
    assert [u for u in page if not u.startswith(origin + "/")] == [], "the UI asked another host"
    passed = [(m, u, code) for m, u, code in proxy.requests if code != 403 or u.startswith(origin)]
    assert passed and all(u.startswith(origin) for _, u, _ in passed), proxy.requests
    assert all(code < 400 for _, u, code in passed if "/ajax-api/2.0/mlflow/experiments/search" in u), passed
    assert (tmp_path / "ui.png").stat().st_size > 10000, result.stderr[-2000:]


SCREENSHOTS = os.path.join(ROOT, "build", "test-output", "ui")  # kept after the run, beside the build (git-ignored)


def browse(url: str, want: list, screenshot: str, proxy_port: int, profile: str, timeout: float = 90) -> str:
    """Open url in headless Chromium (through the login-adding proxy), wait until the page's text
    holds every string in want (or timeout), save a screenshot; the page's text. Driven over
    Chromium's DevTools protocol (aiohttp's websocket client, in the venv with MLflow)."""
    import asyncio
    import base64

    import aiohttp

    async def run() -> str:
        proc = await asyncio.create_subprocess_exec(
            *chromium(profile, proxy_port), "--remote-debugging-port=0", "about:blank",
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
                    return text
        finally:
            proc.kill()
            await proc.wait()

    return asyncio.run(run())


@pytest.mark.parametrize("site", SITES)
def test_the_run_page_shows_the_training_charts_and_the_system_metrics(stack, site, finished_job, tmp_path):
    """What a site's researcher sees: logged in (through the recording proxy on loopback, as above),
    the run page in MLflow's model-training view shows the training charts and, on its own tab, the
    site's system metrics. Screenshots are kept in build/test-output/ui/."""
    server = stack.mlflow(site)
    run = site_run(server, f"{stack.job_name}-{site}", site, finished_job["job_id"])
    run_id, exp_id = run["info"]["run_id"], run["info"]["experiment_id"]
    assert server.history(run_id, "system/cpu_utilization_percentage"), f"{site}: no system metrics in the run"
    user = f"charts{os.getpid()}"
    made = stack.make("mlflow-user", extra=[f"SITE={site}", f"USER={user}"])
    password = re.search(r"keep it safe\): (\S+)", made.stdout).group(1)
    origin = stack.uri(site)
    os.makedirs(SCREENSHOTS, exist_ok=True)
    proxy = RecordingProxy(origin, (user, password))
    try:
        pages = {"model-metrics": ["train_loss", "local_accuracy", "accuracy"],
                 "system-metrics": ["cpu_utilization_percentage", "system_memory_usage_megabytes"]}
        for tab, want in pages.items():
            shot = os.path.join(SCREENSHOTS, f"{site}-{tab}.png")
            text = browse(f"{origin}/#/experiments/{exp_id}/runs/{run_id}/{tab}?workflowType=machine_learning", want,
                          shot, proxy.port, str(tmp_path / f"profile-{tab}"))
            print(f"\n{site} {tab}: {shot}")
            missing = [w for w in want if w not in text]
            assert not missing, f"{site}'s run page ({tab}) does not show {missing}; see {shot}:\n{text[:1500]}"
            assert "Model training" in text and os.path.getsize(shot) > 20000, shot
    finally:
        proxy.close()


# --------------------------------------------------------------------------- a wrong forwarder password


def test_a_wrong_forwarder_password_is_one_clear_line_and_records_wait(stack, finished_job):
    site = SITES[0]
    admin = stack.mlflow(site)
    right = stack.secret(site, "forwarder_password")
    admin._call("PATCH", "/api/2.0/mlflow/users/update-password", body={"username": "forwarder", "password": "wrong-password-123"})
    name = f"{stack.job_name}-wrongpw"
    try:
        out = stack.fedtrack_job(name, 1, "--local-epochs", "1", "--timeout", "900", wait=True)
        assert "FINISHED:COMPLETED" in out, out
        status = stack.make("status").stdout
        assert re.search(rf"{re.escape(site)} tracking spool: [1-9]\d* record\(s\) spooled and undelivered", status), status
        logs = stack.compose("logs", "--no-color", site).stdout
        lines = [l for l in logs.splitlines() if "refused the forwarder's login (HTTP 401)" in l]
        assert len(lines) == 1 and "mlflow_forwarder_password" in lines[0], lines or logs[-3000:]
    finally:
        admin._call("PATCH", "/api/2.0/mlflow/users/update-password", body={"username": "forwarder", "password": right})
    run = site_run(admin, f"{name}-{site}", site, wait=180)  # delivered once the password is right
    assert run["info"]["status"] == "FINISHED"
    assert len(admin.history(run["info"]["run_id"], "train_loss")) > 0
