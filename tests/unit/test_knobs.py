"""One check for every knob: `make check` (the host's python3, before any build) and fedtrack-job (its flags)
refuse the same values with the same words, and take the same ones."""

import os
import subprocess
import sys

import pytest

from fedtrack.knobs import DEFAULTS, KNOBS, KnobError, check_environ
from support import ROOT, SITES, run_job

GOOD = [a for n, site in enumerate(SITES, start=1) for a in ("--site", f"{site}=http://127.0.0.1:{n}")]
BAD = {"ROUNDS": ["0", "10001", "1.5", "+3", "abc", "1e3"], "LOCAL_EPOCHS": ["0", "-1"], "BATCH_SIZE": ["0", "65537"],
       "LR": ["0", "-0.1", "10.5", "nan", "inf", "1,5"], "DATASET": ["mnist", "Digits"],
       "JOB_NAME": ["Bad Name", "-x", "a" * 64, "x;rm"], "TORCH_THREADS": ["-1", "two"]}


def make_check(**knobs) -> subprocess.CompletedProcess:
    """`make check` with these knobs (every other knob empty, as in a fresh .env); the image may be absent."""
    env = {k: v for k, v in os.environ.items() if k not in KNOBS}
    args = [f"{k}={knobs.get(k, '')}" for k in KNOBS if k not in ("DATASET", "JOB_NAME")] + \
        [f"DATASET={knobs.get('DATASET', 'digits')}", f"JOB_NAME={knobs.get('JOB_NAME', 'fedavg-site-tracking')}"]
    return subprocess.run(["make", "--no-print-directory", "-C", ROOT, "knobs", *args], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("var, value", [(v, x) for v, xs in BAD.items() for x in xs])
def test_make_refuses_a_bad_knob_with_the_knobs_one_line(var, value):
    with pytest.raises(KnobError) as e:
        check_environ({var: value})
    line = str(e.value)
    assert line == f"{var}={value}: give {KNOBS[var].give}"
    made = make_check(**{var: value})
    said = [l for l in made.stderr.splitlines() if l.strip() and not l.startswith("make")]  # (make's own last word)
    assert made.returncode != 0 and said == [f"error: {line}"], made.stderr


@pytest.mark.parametrize("var, value", [(v, xs[-1]) for v, xs in BAD.items()])  # one each: a job.py start is slow
def test_the_job_refuses_a_bad_knob_with_the_same_words(var, value):
    flag = "--" + KNOBS[var].name.replace("_", "-")
    job = run_job(*GOOD, f"{flag}={value}", "--env", "export", "--export-dir", "/nonexistent")
    assert job.returncode == 2 and job.stderr.strip().splitlines() == [f"error: {flag}={value}: give {KNOBS[var].give}"], \
        job.stderr


def test_the_defaults_and_good_knobs_pass_both():
    assert make_check(ROUNDS="3", LR="0.05", LOCAL_EPOCHS="1", BATCH_SIZE="64", TORCH_THREADS="0").returncode == 0
    assert check_environ({"ROUNDS": "3", "LR": "1e-3", "JOB_NAME": "a_b-1"}) == {"rounds": 3, "lr": 0.001, "name": "a_b-1"}
    for name, value in DEFAULTS.items():
        knob = next((k for k in KNOBS.values() if k.name == name), None)
        if knob is not None:
            assert knob.check(str(value), name) == value, name


def test_knobs_need_nothing_but_the_standard_library():
    """`make check` runs it with the host's python3, before any image or venv exists."""
    probe = "import sys, fedtrack.knobs; bad = [m for m in sys.modules if m.split('.')[0] in ('yaml', 'torch', 'nvflare')]; print(bad)"
    out = subprocess.run([sys.executable, "-I", "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
