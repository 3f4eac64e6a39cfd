"""`make test` stops before any test when Docker, Compose v2 or Chromium is missing (stack/prereqs.sh),
with one line saying what is missing and how to get it. Run on a PATH of our own: a fake `docker`,
bash and env, and a fake `chromium` when the case wants one."""

import os
import shutil
import subprocess

import pytest

from support import ROOT

SCRIPT = os.path.join(ROOT, "stack", "prereqs.sh")

FAKE_DOCKER = """#!/bin/bash
case "$*" in
  info) exit {info} ;;
  "compose version"*) echo 2.40.3; exit 0 ;;
esac
exit 1
"""


def bare_path(tmp_path, docker_info: int = 0, chromium: bool = True) -> str:
    """A PATH holding bash, env, a `docker` whose `info` exits docker_info (Compose v2 answers), and maybe chromium."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "env"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    fakes = {"docker": FAKE_DOCKER.format(info=docker_info)}
    if chromium:
        fakes["chromium"] = "#!/bin/bash\nexit 0\n"
    for name, text in fakes.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


def prereqs(path: str) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT], env={"PATH": path}, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_all_there_passes_silently(tmp_path):
    """The control for the two below: with everything present the script says nothing and exits 0."""
    r = prereqs(bare_path(tmp_path))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


@pytest.mark.parametrize("case, expected", [
    ({"chromium": False}, "error: Chromium not found; the UI tests need it: apt-get install chromium (Debian/Ubuntu)"),
    ({"docker_info": 1}, "error: no Docker engine answers (docker info failed); start it (systemctl start docker) "
                         "or get access to its socket (the docker group, DOCKER_HOST)"),
])
def test_a_missing_prerequisite_is_one_error_line_and_exit_2(tmp_path, case, expected):
    r = prereqs(bare_path(tmp_path, **case))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.splitlines() == [expected] and r.stdout == "", r.stderr
