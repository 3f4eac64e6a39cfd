"""The admin-kit holder's attacks (tests/attacks.py) on the stack `make up` starts: each is submitted from
the admin container as a real job, and the participant it targets refuses it at deploy with its reason.
After all of them: no file any of them would write exists at any site or the server, no secret is in any
site's MLflow (registry, experiments, runs' tags and params), and what the admin can obtain of the first
job (its download, meta, the server's workspace) holds no metric value of a site, however rounded."""

import json
import re

import pytest

from attacks import ATTACKS, MARKER, attacked_files
from checks import SITES, file_texts
from support import run_job
from test_trust import SERVICES, secret_values

pytestmark = pytest.mark.docker

SUBMIT = """
import subprocess, tempfile, time
attacks = json.loads(sys.stdin.read())
tmp = tempfile.mkdtemp()
subprocess.run(["fedtrack-job", "--env", "export", "--export-dir", tmp, "--name", "attack-base", "--rounds", "1",
                "--local-epochs", "1"], check=True, capture_output=True)
import shutil
for i, (attack, files) in enumerate(attacks.items()):
    job = os.path.join(tmp, f"attack-{i}")
    shutil.copytree(os.path.join(tmp, "attack-base"), job)
    for rel, text in files.items():
        path = os.path.join(job, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    job_id = sess.submit_job(job)
    for _ in range(240):
        status = sess.get_job_status(job_id) or ""
        if status.startswith(("FINISHED", "FAILED", "ABORTED")):
            break
        time.sleep(0.5)
    print("RESULT", json.dumps({"attack": attack, "job_id": job_id, "status": status,
                                "detail": sess.get_job_meta(job_id).get("job_deploy_detail", [])}))
"""


@pytest.fixture(scope="module")
def refusals(stack, first_job, tmp_path_factory):
    """{attack: (status, deploy detail)}: every attack, submitted in one admin session after the first job."""
    base = tmp_path_factory.mktemp("attacks")
    result = run_job("--env", "export", "--export-dir", str(base), "--name", "attack-base", "--rounds", "1",
                     "--local-epochs", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    edits = {attack: attacked_files(base / "attack-base", attack) for attack in ATTACKS}
    out = stack.admin_python(SUBMIT, stdin=json.dumps(edits))
    results = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            results[r["attack"]] = (r["status"], r["detail"])
    assert set(results) == set(ATTACKS), out[-3000:]
    return results


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_each_attack_is_refused_at_deploy_by_the_participant_it_targets(refusals, attack):
    _, refuser, reason = ATTACKS[attack]
    status, detail = refusals[attack]
    assert status == "FINISHED:FAILED_TO_RUN", (status, detail)
    refusal = [d for d in detail if d.startswith(f"{refuser}: ")]
    assert refusal and reason in refusal[0], f"{refuser} gave no refusal naming {reason!r}: {detail}"


def test_after_every_attack_no_site_holds_a_file_of_theirs_and_no_mlflow_a_secret(stack, refusals):
    for service in ("server", *SITES):
        found = stack.compose("exec", "-T", service, "find", "/workspace", "/tmp", "-name", MARKER, check=False).stdout
        assert not found.strip(), f"an attack's payload ran at {service}: {found}"
    secrets = secret_values(stack)
    assert len(secrets) >= 8
    for site in SITES:
        text = mlflow_text(stack, site)
        assert "fedavg-site-tracking" in text or stack.job_name in text, "the dump of the site's MLflow is empty"
        held = [s[:6] + "..." for s in secrets if s in text]
        assert not held, f"{site}'s MLflow holds secrets: {held}"
        assert "${secret" not in text


def mlflow_text(stack, site: str) -> str:
    """Everything a reader of the site's MLflow can list: experiments, runs (tags, params), registered models
    and their versions, as one text."""
    server = stack.mlflow(site)
    parts = [server.experiments(), server.runs()]
    for path in ("registered-models/search", "model-versions/search"):
        parts.append(server._call("GET", f"/api/2.0/mlflow/{path}", {"max_results": 1000}))
    return json.dumps(parts)


def rounded_forms(value: float, decimals=(4, 3, 2)) -> set:
    """How an attacker would print a value: fixed decimals, and as a percentage."""
    out = {f"{value:.{d}f}" for d in decimals}
    out |= {f"{value * 100:.{d}f}%" for d in (2, 1)}
    return out


def found(text: str, needles: set, named: bool = False) -> list:
    """The needles in text as whole numbers (no digit or point before, no digit after); with named, only
    where a metric's name comes shortly before (`"accuracy": 0.93`): two decimals alone match timings."""
    before = r"(?:acc|loss|metric|score)[^0-9\n]{0,40}" if named else ""
    return sorted(n for n in needles
                  if re.search(before + r"(?<![0-9.])" + re.escape(n) + r"(?![0-9])", text, re.I))


def test_what_the_admin_can_obtain_holds_no_metric_value_however_rounded(stack, finished_job, refusals, tmp_path):
    """The first job's accuracy values (what an attacker wants most), rounded to 4, 3 and 2 decimals and as
    percentages, in its download, meta and job list and in the server's workspace; the search is shown to
    find a value planted first. Two decimals only after a metric's name: alone, they match timings (a
    first run found a round's 0.08 among nvflare's durations)."""
    values = finished_job["accuracies"]
    assert values, "no accuracy was logged"
    fine = set().union(*(rounded_forms(v, (4, 3)) for v in values))
    coarse = set().union(*(rounded_forms(v, (2,)) for v in values))
    code = """
import tempfile
job_id = sys.argv[1]
out = tempfile.mkdtemp()
sess.download_job_result(job_id, out)
for root, _, files in os.walk(out):
    for f in files:
        with open(os.path.join(root, f), "rb") as fh:
            sys.stdout.write("FILE " + f + "\\n" + fh.read().decode("utf-8", "ignore") + "\\n")
print("META", json.dumps(sess.get_job_meta(job_id)))
print("JOBS", json.dumps(sess.list_jobs(detailed=True), default=str))
"""
    out = stack.admin_python(code, finished_job["job_id"])
    server = tmp_path / "server"
    stack.copy_out("server", "/workspace", str(server))  # its job store's zips too, read member by member
    server_text = "\n".join(text for _, text in file_texts(str(server)))
    everything = out + server_text
    assert "FILE " in out and '"analytics_events": 0' in server_text, out[-2000:]  # the download and the guard's report were read
    planted = sorted(fine)[0]
    assert found(everything + f" accuracy {planted}\n", fine) == [planted], "the search misses a planted value"
    assert found(everything + f'"val_acc": {sorted(coarse)[0]}', coarse, named=True) == [sorted(coarse)[0]]
    assert not found(everything, fine), f"accuracy values (4 or 3 decimals, percentages): {found(everything, fine)}"
    assert not found(everything, coarse, named=True), f"accuracy values (2 decimals): {found(everything, coarse, named=True)}"


@pytest.mark.parametrize("service", [s for s in SERVICES if s == "server" or s in SITES])
def test_each_participant_installed_its_deploy_check_and_each_site_its_privacy_filter(stack, service):
    code = ("import json; r = json.load(open('/workspace/local/resources.json')); print(r['app_validator']['path']);"
            "import os; p = '/workspace/local/privacy.json'; print(json.load(open(p))['default_scope'] if os.path.exists(p) else 'none')")
    out = stack.exec_python(service, code).stdout.split()
    assert out[0] == "fedtrack.policy.validator.ParticipantAppValidator", out
    assert out[1] == ("none" if service == "server" else "site"), out
