"""Three hosts, simulated from `make bundles`: the server's, each site's and the admin's bundle, each
copied to a folder of its own and started as its own compose project, joined only through the FL
port the server's bundle publishes on the host. Uses the shared stack's kits (no provisioning of
its own); runs after test_stack.py, whose first tests need the shared job still running."""

import hashlib
import os
import re

import pytest

from checks import check_only_own_runs, check_site_run, site_run
from fedtrack.project import Project, port_var
from integration.deployment import Deployment, run
from integration.test_sites import ROUNDS
from support import ROOT, free_port

pytestmark = pytest.mark.docker


def tree(folder) -> dict:
    """{relative path: (mode, owner, sha256)} of every file under folder."""
    out = {}
    for d, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(d, f)
            st = os.lstat(path)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = (st.st_mode, st.st_uid, hashlib.sha256(fh.read()).hexdigest())
    return out


def test_make_bundles_is_repeatable_and_names_only_participants(stack, tmp_path):
    dist = tmp_path / "dist"
    stack.make("bundles", extra=[f"DIST={dist}"])
    first = tree(dist)
    project = Project(os.path.join(ROOT, "provision", "project.yml"))
    assert sorted(os.listdir(dist)) == sorted(project.participants())
    stack.make("bundles", extra=[f"DIST={dist}"])
    assert tree(dist) == first
    bad = stack.make("bundles", check=False, extra=[f"DIST={dist}", "PARTICIPANT=site-9"])
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error")]
    assert bad.returncode != 0 and len(errors) == 1, bad.stderr
    assert errors[0] == ("error: PARTICIPANT=site-9 is not in provision/project.yml; the participants are: "
                         + ", ".join(project.participants())), bad.stderr
    assert tree(dist) == first


def private_keys(folder) -> dict:
    """{path: PEM} of every private key under folder."""
    keys = {}
    for d, _, files in os.walk(folder):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                blob = fh.read()
            if b"PRIVATE KEY-----" in blob:
                keys[os.path.relpath(os.path.join(d, f), folder)] = blob
    return keys


def test_three_hosts_from_bundles(stack, tmp_path):
    """The server's, each site's and the admin's bundle, each copied to its own folder and started
    as its own compose project: the sites and the admin dial the server at host-gateway, through
    the FL port the server bundle publishes on the Docker bridge's address of this host."""
    project = Project(os.path.join(ROOT, "provision", "project.yml"))
    server, admin = project.server["name"], project.admin["name"]
    dist = tmp_path / "dist"
    stack.make("bundles", extra=[f"DIST={dist}"])
    # host-gateway is the default bridge's address on this host: publish the FL port there only.
    bridge = re.search(r"inet (\S+)/", run(["ip", "-4", "-o", "addr", "show", "docker0"], ROOT).stdout).group(1)
    # Each "host" runs its bundle's make and compose as a fresh shell would: none of this session's knobs.
    clean_env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "DOCKER_HOST", "DOCKER_CONFIG")}
    hosts, ports = {}, {site: free_port() for site in project.sites}
    job_name = f"hosts-{os.getpid()}"
    for n, part in enumerate(project.participants()):
        host = tmp_path / f"host-{n}"
        run(["cp", "-a", str(dist / part), str(host)], ROOT)  # keeps the kit's owners and modes
        settings = {"COMPOSE_PROJECT_NAME": f"{stack.name}-host-{n}", "FL_SERVER_ADDRESS": "host-gateway",
                    "FL_BIND": bridge, "JOB_NAME": job_name, "ROUNDS": str(ROUNDS)}
        if part in project.sites:
            settings[port_var(part)] = str(ports[part])
        with open(host / ".env") as f:
            env = f.read()
        for key, value in settings.items():
            env = re.sub(rf"(?m)^{key}=.*$", f"{key}={value}", env)
        with open(host / ".env", "w") as f:
            f.write(env)
        hosts[part] = Deployment(host, env=clean_env, ports={part: ports[part]} if part in project.sites else {})
    try:
        # Only the participant's own key: no other kit's, never the root CA's.
        all_keys = {p: private_keys(hosts[p].folder) for p in hosts}
        for part, keys in all_keys.items():
            assert list(keys) == [f"kit/startup/{'server' if part == server else 'client'}.key"], (part, list(keys))
        with open(os.path.join(stack.ca, "cert.json"), "rb") as f:
            ca = f.read()
        for part, keys in all_keys.items():
            others = [k for p, ks in all_keys.items() if p != part for k in ks.values()]
            for d, _, files in os.walk(hosts[part].folder):
                for f in files:
                    with open(os.path.join(d, f), "rb") as fh:
                        blob = fh.read()
                    assert not any(k in blob for k in others), f"{part}: {f} holds another participant's key"
            assert b"PRIVATE KEY" in ca and not any(blob in ca for blob in keys.values())

        hosts[server].make("up")
        sites = [hosts[s].start_make("up") for s in project.sites]
        for site, proc in zip(project.sites, sites):
            out = proc.communicate(timeout=900)[0]
            assert proc.returncode == 0, f"{site}: make up failed:\n{out[-4000:]}"
        hosts[admin].make("up")
        submitted = hosts[admin].make("submit").stdout
        job_id = re.search(r"submitted job (\S+)", submitted).group(1)
        waited = hosts[admin].make("wait").stdout
        assert f"job {job_id} FINISHED:COMPLETED" in waited, waited

        for site in project.sites:
            # No network of another participant's project: the published FL port is the only way.
            cid = hosts[site].compose("ps", "-q", site).stdout.strip()
            nets = run(["docker", "inspect", "-f", "{{range $n, $v := .NetworkSettings.Networks}}{{$n}} {{end}}", cid], ROOT).stdout.split()
            assert nets and all(n.startswith(f"{stack.name}-host-{list(hosts).index(site)}_") for n in nets), nets
            mlflow = hosts[site].mlflow(site)
            check_site_run(mlflow, site_run(mlflow, f"{job_name}-{site}", site, job_id), site, ROUNDS)
            check_only_own_runs(mlflow, site)
    finally:
        # Each host's service logs, kept beside the build (git-ignored) for a failure's post-mortem.
        logs = os.path.join(ROOT, "build", "test-output", "three-hosts")
        os.makedirs(logs, exist_ok=True)
        for part, host in hosts.items():
            with open(os.path.join(logs, f"{part}.log"), "w") as f:
                f.write(host.logs())
        for host in hosts.values():
            host.down()
