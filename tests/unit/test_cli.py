"""Bad input to job.py: one clear line on stderr, exit code 2, nothing started."""

import os
import socket
import subprocess

import pytest

from checks import SITES
from support import BIN, ROOT, free_port, run_job

first, second = SITES[:2]
GOOD = [a for n, site in enumerate(SITES, start=1) for a in ("--site", f"{site}=http://127.0.0.1:{n}")]


def one_line_error(result, *expected):
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--site", "site-9=http://127.0.0.1:5001"], ["unknown site 'site-9'", ", ".join(SITES)]),  # not in the project
        (["--site", f"{first}=http://a:1", "--site", f"{first}=http://b:2"], [f"{first} is given twice"]),
        (["--site", first], [f"site {first} has no tracking URI", f"--site {first}=http://HOST:PORT"]),
        (["--site", f"{first}="], [f"site {first} has no tracking URI"]),
        (["--site", f"{first}=localhost:5001"], ["not an http(s) tracking URI"]),
        (["--site", f"{first}=ftp://host:21"], ["not an http(s) tracking URI"]),
        (["--site", f"{first}=http://:5001"], ["not an http(s) tracking URI"]),
        (["--site", f"{first}=http://host:99999"], ["not an http(s) tracking URI"]),
        (["--site", f"{first}=file:///tmp/mlruns"], ["not an http(s) tracking URI"]),
        (GOOD + ["--rounds", "0"], ["--rounds=0: give a whole number of rounds from 1 to 10000"]),
        (GOOD + ["--name", "Bad Name"], ["--name=Bad Name: give lowercase letters"]),
        (GOOD + ["--register-model", "my model;x"], ["--register-model=my model;x: give a registered model name",
                                                      "letters, digits"]),
        (GOOD + ["--lr", "nan"], ["--lr=nan: give a learning rate above 0"]),
        (GOOD + ["--dataset", "mnist"], ["--dataset=mnist: give digits (bundled) or cifar10"]),
    ],
)
def test_bad_site_and_uri_input(args, expected):
    one_line_error(run_job(*args, "--env", "export"), *expected)


def test_the_tracking_probe_names_what_is_wrong():
    """job.py --env sim warns with this reason when a site's server does not answer (the job still
    runs: the site spools its records; see test_delivery.py)."""
    from fedtrack.job.inputs import probe_tracking_server

    assert "Connection refused" in probe_tracking_server(f"http://127.0.0.1:{free_port()}")
    with socket.socket() as s:  # accepts connections, never speaks HTTP
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert probe_tracking_server(f"http://127.0.0.1:{s.getsockname()[1]}", timeout=1)


def test_missing_cifar10_names_the_directory_and_how_to_get_it(tmp_path):
    result = run_job(*GOOD, "--env", "sim", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nothing"))
    one_line_error(result, f"CIFAR-10 not found in {tmp_path / 'nothing'}", "cifar-10-python.tar.gz", "--dataset digits")


def test_prod_needs_an_admin_kit():
    one_line_error(run_job(*GOOD, "--env", "prod"), "--startup-kit", "make provision")


def test_missing_admin_kit(tmp_path):
    one_line_error(run_job(*GOOD, "--env", "prod", "--startup-kit", str(tmp_path / "nope")),
                   "startup kit not found", "make provision")


@pytest.fixture(scope="module")
def kits(tmp_path_factory):
    root = tmp_path_factory.mktemp("kits")
    subprocess.run([os.path.join(BIN, "nvflare"), "provision", "-p", os.path.join(ROOT, "provision", "project.yml"),
                    "-w", str(root), "--force"], check=True, capture_output=True, cwd=root)
    return root / "fedtrack" / "prod_00"


def test_a_client_kit_is_not_an_admin_kit(kits):
    one_line_error(run_job(*GOOD, "--env", "prod", "--startup-kit", str(kits / first)), "not an admin startup kit")


def test_an_admin_kit_without_its_key(kits, tmp_path):
    import shutil

    broken = tmp_path / "admin"
    shutil.copytree(kits / "admin@fedtrack.local", broken)
    os.remove(broken / "startup" / "client.key")
    one_line_error(run_job(*GOOD, "--env", "prod", "--startup-kit", str(broken)), "lacks client.key")


def test_a_kit_of_another_user(kits):
    one_line_error(run_job(*GOOD, "--env", "prod", "--startup-kit", str(kits / "admin@fedtrack.local"),
                           "--username", "someone@else.org"), "belongs to admin@fedtrack.local")


# --------------------------------------------------------------------------- make up's knobs


@pytest.mark.parametrize(
    "knobs, expected",
    [
        (["ROUNDS=0"], ["ROUNDS=0", "from 1 to 10000"]),
        (["ROUNDS=five"], ["ROUNDS=five", "whole number"]),
        (["DATASET=mnist"], ["DATASET=mnist", "digits", "cifar10"]),
        (["JOB_NAME=My Job"], ["JOB_NAME=My Job"]),
        (["LR=0"], ["LR=0", "above 0"]),
        (["LR=fast"], ["LR=fast", "learning rate"]),
        (["LOCAL_EPOCHS=0"], ["LOCAL_EPOCHS=0", "from 1 to 1000"]),
        (["BATCH_SIZE=-4"], ["BATCH_SIZE=-4", "whole number"]),
        (["GPUS=abc"], ["GPUS=abc: give all, a number of GPUs"]),
        (["GPUS=0"], ["GPUS=0: give all, a number of GPUs"]),
        (["GPUS=-1"], ["GPUS=-1: give all, a number of GPUs"]),
    ],
)
@pytest.mark.parametrize("target", ["up", "submit"])
def test_make_up_and_submit_refuse_bad_knobs_before_anything_starts(target, knobs, expected, tmp_path):
    """`make up` and `make submit` check their knobs first: no image build, no container, no docker
    call at all (a `docker` first on PATH records any call). The sites' ports: test_topology.py."""
    calls = tmp_path / "docker-calls"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\nexit 1\n")
    (fake / "docker").chmod(0o755)
    env = dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}")
    result = subprocess.run(["make", "--no-print-directory", "-s", target, *knobs], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = [l for l in result.stderr.splitlines() if l.strip() and not l.startswith("make")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert not calls.exists(), f"docker was called: {calls.read_text()}"
