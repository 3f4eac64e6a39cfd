"""A site trusts no one it does not have to, on the real stack: the admin gets no shell and ships no
code, nothing it can obtain holds a metric value, a foreign or renamed client is refused, each
site's MLflow needs a login, nothing is in an image layer or in git that is secret, every container
is hardened and routes out only where the README says, and the UI calls no one but its site."""

import glob
import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from checks import SITES, site_run
from fedtrack.direct import DIRECT
from fedtrack.pins import pin
from stack.mlflow_rest import basic_auth
from support import ROOT, wait_until

pytestmark = pytest.mark.docker

SERVICES = ("server", *SITES, *(f"mlflow-{s}" for s in SITES))
FLARE_IMAGE = f"fedtrack/flare:{pin('nvflare')}"
MLFLOW_IMAGE = f"fedtrack/mlflow:{pin('mlflow')}"


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
    """The config-only job plus custom code in each site's app, which the site's executor runs as its
    training script if the site deploys it (the server's app stays clean, so the server deploys the
    job and each site decides for itself): each site refuses it, and the probe writes nothing."""
    code = """
import os, subprocess, tempfile, time
tmp = tempfile.mkdtemp()
subprocess.run(["fedtrack-job", "--env", "export", "--export-dir", tmp, "--name", "byoc-probe"],
               check=True, capture_output=True)
job = os.path.join(tmp, "byoc-probe")
for site in sys.argv[1:]:  # custom code in each site's app, as a BYOC job carries it, run as its training script
    app = "app_" + site
    os.makedirs(os.path.join(job, app, "custom"), exist_ok=True)
    with open(os.path.join(job, app, "custom", "probe.py"), "w") as f:
        f.write("open('/workspace/BYOC_RAN', 'w').write('ran')\\n")
    config = os.path.join(job, app, "config", "config_fed_client.json")
    with open(config) as f:
        fed_client = json.load(f)
    fed_client["executors"][0]["executor"] = {  # nvflare's own executor, running probe.py from the app's custom/
        "path": "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor",
        "args": {"execution_mode": "in_process", "task_script_path": "probe.py"}}
    with open(config, "w") as f:
        json.dump(fed_client, f)
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
    for service in ("server", *SITES):
        ran = stack.compose("exec", "-T", service, "test", "-e", "/workspace/BYOC_RAN", check=False).returncode == 0
        assert not ran, f"the job's own code ran at {service}: {out[-2000:]}"
    assert "STATUS FINISHED:FAILED_TO_RUN" in out, out
    detail = json.loads(out.split("DETAIL ", 1)[1].splitlines()[0])
    for site in SITES:  # the site's deploy check sees custom/ before nvflare's BYOC right would (test_attacks.py)
        assert any(d.startswith(f"{site}: NVFLARE_ERROR: this site refuses the job: the job brings custom") for d in detail), detail


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


def run_rogue_client(stack, kit: str, name: str, refused) -> tuple:
    """Start a client container from `kit` on the stack's FL network and wait (at most 120 s) until
    refused(its log, the server's log since it started) says its dial was refused; both logs."""
    since = str(int(time.time()) - 1)
    cid = subprocess.run(
        ["docker", "run", "-d", "--name", name, "--network", f"{stack.name}_fl", "--read-only", "--tmpfs", "/tmp",
         "--tmpfs", "/workspace:uid=10001,gid=10001", "-v", f"{kit}:/kit:ro", "--entrypoint", "fedtrack-entrypoint",
         FLARE_IMAGE],
        capture_output=True, text=True, check=True).stdout.strip()
    server = stack.compose("ps", "-q", "server").stdout.strip()
    logs = lambda c, *a: subprocess.run(["docker", "logs", *a, c], capture_output=True, text=True).stdout  # noqa: E731
    try:
        wait_until(lambda: refused(logs(cid), logs(server, "--since", since)), 120, f"{name}'s dial refused")
        return logs(cid), logs(server, "--since", since)
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
    # It dials the server, and the TLS handshake fails: neither side's certificate is from the other's CA.
    logs, _ = run_rogue_client(stack, str(kit), f"{stack.name}-rogue-ca",
                               lambda client, server: "Cannot connect to host server:" in client and "CERTIFICATE_VERIFY_FAILED" in client)
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
    # The server takes its certificate (the project's CA) and refuses the name it claims.
    claim = f"authenticated as '{site}' but claimed endpoint 'site-9' requires identity 'site-9'"
    logs, server = run_rogue_client(stack, str(kit), f"{stack.name}-rogue-name", lambda client, server: claim in server)
    assert "uid=site-9" in logs, logs[-2000:]
    assert "site-9" not in registered_clients(stack), logs[-3000:]
    assert "Successfully registered client" not in logs, logs[-3000:]


# --------------------------------------------------------------------------- each site's MLflow: a login


def status_of(url: str, auth: tuple = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", basic_auth(*auth))
    try:
        with DIRECT.open(req, timeout=10) as resp:  # a login goes to the site, never through a proxy
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


def image_metadata(image: str) -> str:
    """What an image says of itself besides its files: its history (each step's command and build
    arguments), labels and environment."""
    history = subprocess.run(["docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image],
                             capture_output=True, text=True, check=True).stdout
    config = json.loads(subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True, check=True).stdout)[0]["Config"]
    return history + json.dumps(config.get("Labels")) + json.dumps(config.get("Env"))


def holding(folder, patterns) -> list:
    """Files under folder holding any of the patterns (fixed strings, one per line in the file `patterns`)."""
    found = subprocess.run(["grep", "-r", "-l", "-a", "-F", "-f", str(patterns), str(folder)], capture_output=True, text=True)
    assert found.returncode in (0, 1), found.stderr
    return found.stdout.split()


def test_no_secret_in_what_a_build_takes_in_or_in_git(stack, tmp_path):
    """The images built again now that the kits and secrets exist (the hash of their inputs unchanged, so
    the same images): each build context, exactly as the daemon was sent it, and each image's
    history, labels and environment hold no secret; nor does any file git tracks."""
    needles = secret_values(stack)
    assert len(needles) > 10
    patterns = tmp_path / "patterns"
    patterns.write_text("\n".join(sorted(needles)) + "\n")
    ids = {image: subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", image], capture_output=True, text=True,
                                 check=True).stdout.strip() for image in (FLARE_IMAGE, MLFLOW_IMAGE)}
    contexts = tmp_path / "contexts"
    stack.make("images", extra=["FORCE=1", f"CONTEXT_OUT={contexts}"], timeout=1800)
    assert sorted(os.listdir(contexts)) == ["flare", "mlflow"]
    assert len(glob.glob(str(contexts / "flare" / "rootfs" / "**" / "*.py"), recursive=True)) > 20  # the package's source
    assert holding(contexts, patterns) == [], "a secret is in a build context"
    for image, before in ids.items():
        assert subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", image], capture_output=True, text=True,
                              check=True).stdout.strip() == before, f"{image} changed when built after provisioning"
        meta = image_metadata(image)
        assert "fedtrack.build-hash" in meta and not [n for n in needles if n in meta], f"a secret is in {image}'s history or labels"
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


def default_gateway(stack, service: str):
    """The gateway of the container's default route (an IPv4 address), or None when it has none."""
    table = stack.compose("exec", "-T", service, "cat", "/proc/net/route").stdout.splitlines()[1:]
    for fields in (line.split() for line in table):
        if len(fields) > 2 and fields[1] == "00000000":
            return str(ipaddress.IPv4Address(bytes.fromhex(fields[2])[::-1]))
    return None


def networks(stack, service: str) -> dict:
    """{network: (subnet, bridge, internal)} of the container's networks, as Docker configured them."""
    out = {}
    for net in container(stack, service)["NetworkSettings"]["Networks"]:
        info = json.loads(subprocess.run(["docker", "network", "inspect", net], capture_output=True, text=True, check=True).stdout)[0]
        bridge = info["Options"].get("com.docker.network.bridge.name") or f"br-{info['Id'][:12]}"
        out[net] = (ipaddress.ip_network(info["IPAM"]["Config"][0]["Subnet"]), bridge, info["Internal"])
    return out


def host_firewall_rules() -> list:
    """The host's filter rules (as root, like CI), from whichever iptables back end Docker wrote them with."""
    rules = []
    for tool in ("iptables-save", "iptables-legacy-save", "iptables-nft-save"):
        if shutil.which(tool):
            rules += subprocess.run([tool, "-t", "filter"], capture_output=True, text=True).stdout.splitlines()
    assert any("DOCKER-ISOLATION-STAGE-1" in r for r in rules), "no Docker rules in the host's firewall (run as root)"
    return rules


def firewall_drops_off_subnet(rules: list, subnet, bridge: str) -> bool:
    """Whether the host's firewall drops what the bridge's containers send off their subnet, and what
    would come in to them from elsewhere (Docker's rules for an `internal` network)."""
    return (f"-A DOCKER-ISOLATION-STAGE-1 ! -d {subnet} -i {bridge} -j DROP" in rules
            and f"-A DOCKER-ISOLATION-STAGE-1 ! -s {subnet} -o {bridge} -j DROP" in rules)


def test_only_the_mlflow_servers_have_a_route_out(stack):
    """Docker 20.10 writes a default route into every container, also on internal networks: the proof
    is where that route leads (a bridge of an `internal` network) and that the host's firewall drops
    whatever that bridge's containers send off its subnet. Only a site's MLflow is on a routed
    network (its `-ui` network, which publishes its port on the host's loopback)."""
    rules = host_firewall_rules()
    for service in SERVICES:
        nets, gw = networks(stack, service), default_gateway(stack, service)
        site = service[len("mlflow-"):] if service.startswith("mlflow-") else None
        routed = sorted(n for n, (_, _, internal) in nets.items() if not internal)
        assert routed == ([f"{stack.name}_{site}-ui"] if site else []), f"{service} is on routed networks {routed}"
        via = [n for n, (subnet, _, _) in nets.items() if gw and ipaddress.ip_address(gw) in subnet]
        print(f"\n{service}: default route via {gw} on {via}; routed networks: {routed}")
        assert gw is None or len(via) == 1, f"{service}: its default route {gw} leads to none of its networks"
        for net, (subnet, bridge, internal) in nets.items():
            assert firewall_drops_off_subnet(rules, subnet, bridge) == internal, \
                f"{service}: the host's firewall {'does not drop' if internal else 'drops'} traffic leaving {net} ({bridge}, {subnet})"
        if not site:
            assert not via or nets[via[0]][2], f"{service}: its default route leads to the routed network {via}"


# --------------------------------------------------------------------------- a wrong forwarder password


def test_a_wrong_forwarder_password_is_one_clear_line_and_records_wait(stack, finished_job, idle):
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
