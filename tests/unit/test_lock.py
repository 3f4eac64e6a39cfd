"""The images install only locked wheels: docker/{tools,mlflow,flare}.lock pin every package (dependencies
included) with a sha256, made from requirements.txt's pins (`make lock`), and the check the build runs
before `docker build` (docker/wheelhouse.sh --verify) refuses a wheel whose bytes changed, with one line.
No network, no Docker: the wheelhouses here are a few files made by the test."""

import hashlib
import os
import re
import subprocess

import pytest

from fedtrack.pins import canonical, pins
from support import ROOT

SCRIPT = os.path.join(ROOT, "docker", "wheelhouse.sh")
LOCKS = {name: os.path.join(ROOT, "docker", f"{name}.lock") for name in ("tools", "mlflow", "flare")}
# What goes in which image (docker/wheelhouse.sh): the build tools, the MLflow server, every other pin.
NOT_IN_ANY_IMAGE = {"pytest"}
TOOLS = {"uv", "setuptools"}


def entries(path: str) -> dict:
    """{canonical name: (version, [sha256...])} of a lock; an entry that is not `name==version --hash=...` fails."""
    with open(path) as f:
        text = f.read().replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition("==")
        version, *options = rest.split()
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) and version, f"{path}: not a == pin: {line!r}"
        hashes = [o.removeprefix("--hash=sha256:") for o in options]
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), \
            f"{path}: {name}=={version} is not followed by sha256 hashes only: {options}"
        assert canonical(name) not in found, f"{path}: {name} twice"
        found[canonical(name)] = (version, hashes)
    return found


def test_every_lock_entry_is_pinned_with_a_sha256():
    for name, path in LOCKS.items():
        locked = entries(path)
        assert len(locked) >= {"tools": 2, "mlflow": 20, "flare": 50}[name], f"{path} holds only {sorted(locked)}"


def test_the_locks_cover_every_pin_of_requirements_txt_at_its_version():
    """Each image's lock holds its pins at requirements.txt's versions (a local version such as +cpu, from
    TORCH_INDEX_URL, aside), and any package of a lock that requirements.txt pins has the pinned version."""
    pinned = pins()
    locks = {name: entries(path) for name, path in LOCKS.items()}
    wanted = {"tools": TOOLS, "mlflow": {"mlflow"}, "flare": set(pinned) - TOOLS - NOT_IN_ANY_IMAGE}
    for name, locked in locks.items():
        missing = sorted(wanted[name] - set(locked))
        assert not missing, f"{LOCKS[name]} lacks {missing}: run make lock"
        wrong = {p: (locked[p][0], pinned[p]) for p in set(locked) & set(pinned) if locked[p][0].split("+")[0] != pinned[p]}
        assert not wrong, f"{LOCKS[name]}: (locked, pinned) versions differ: {wrong}: run make lock"
    unlocked = set(pinned) - NOT_IN_ANY_IMAGE - set().union(*locks.values())
    assert not unlocked, f"pins of requirements.txt in no lock: {sorted(unlocked)}"


def test_the_images_install_only_the_locks_with_hashes_required():
    """Every install from the wheel server in both Dockerfiles takes a lock with --require-hashes (setuptools,
    which builds fedtrack, as a hashed build constraint), and build-images.sh verifies before `docker build`."""
    for image in ("flare", "mlflow"):
        with open(os.path.join(ROOT, "docker", f"{image}.Dockerfile")) as f:
            text = f.read().replace("\\\n", " ")
        installs = [c for c in re.split(r"&&|\n", text) if re.search(r"\bpip install\b", c)]
        assert len(installs) >= 2, f"{image}.Dockerfile: no install found"
        for command in installs:
            hashed = "--require-hashes" in command.split() and re.search(r" -r /opt/venv-locks/(tools|flare|mlflow)\.lock\b", command)
            built = re.search(r" --build-constraints /opt/venv-locks/tools\.lock\b", command) and "--no-deps" in command.split()
            assert hashed or built, \
                f"{image}.Dockerfile installs without a lock's hashes: {' '.join(command.split())}"
    with open(os.path.join(ROOT, "docker", "build-images.sh")) as f:
        build = f.read()
    command = re.search(r"^\s*docker build ", build, re.M)
    assert command and 0 <= build.find('wheelhouse.sh" --verify') < command.start(), \
        "build-images.sh does not verify the wheels before docker build"


def wheelhouse(tmp_path):
    """A wheel directory of two packages and its lock (names spelled as a wheel and a lock spell them)."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    lines = ["# a lock", "# from: alpha-pkg==1.0 beta==2.0.post1"]
    for filename, pin, data in (("alpha_pkg-1.0-py3-none-any.whl", "Alpha.Pkg==1.0", b"alpha wheel bytes"),
                                ("beta-2.0.post1-cp311-cp311-manylinux_2_17_x86_64.whl", "beta==2.0.post1", b"beta " * 999)):
        (folder / filename).write_bytes(data)
        other = hashlib.sha256(b"the wheel of another platform").hexdigest()
        lines.append(f"{pin} \\\n    --hash=sha256:{other} \\\n    --hash=sha256:{hashlib.sha256(data).hexdigest()}")
    (folder / "requirements.txt").write_text("ignored: the set's copy of its lock\n")
    (folder / ".stamp-0123").write_text("")
    lock = tmp_path / "wheels.lock"
    lock.write_text("\n".join(lines) + "\n")
    return folder, lock


def verify(folder, lock) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", SCRIPT, "--verify", str(folder), str(lock)], capture_output=True, text=True,
                          timeout=60, env={k: v for k, v in os.environ.items() if k not in ("LOCK_DIR", "PYTHON")})


def test_the_verification_passes_a_wheelhouse_that_matches_its_lock(tmp_path):
    folder, lock = wheelhouse(tmp_path)
    done = verify(folder, lock)
    assert done.returncode == 0, done.stderr
    assert "2 wheels" in done.stderr


@pytest.mark.parametrize("change", ["one byte", "appended", "replaced"])
def test_a_wheel_whose_bytes_changed_is_refused_with_one_line_naming_it(tmp_path, change):
    folder, lock = wheelhouse(tmp_path)
    wheel = folder / "beta-2.0.post1-cp311-cp311-manylinux_2_17_x86_64.whl"
    data = bytearray(wheel.read_bytes())
    if change == "one byte":
        data[len(data) // 2] ^= 0x01
    elif change == "appended":
        data += b"\n"
    else:
        data = bytearray(b"a wheel of the same name from somewhere else")
    wheel.write_bytes(bytes(data))
    done = verify(folder, lock)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(wheel) in lines[0] and hashlib.sha256(bytes(data)).hexdigest() in lines[0] and "beta==2.0.post1" in lines[0], lines[0]


@pytest.mark.parametrize("case, expected", [
    ("missing", "no wheel of Alpha.Pkg==1.0"),
    ("extra", "gamma-3.0-py3-none-any.whl: not in"),
    ("sdist", "alpha_pkg-1.0.tar.gz: not in"),
    ("no hash", "beta==2.0.post1 has no sha256 hash"),
    ("md5 only", "beta==2.0.post1 has no sha256 hash"),
])
def test_a_missing_or_extra_wheel_or_an_unhashed_entry_is_refused_with_one_line(tmp_path, case, expected):
    folder, lock = wheelhouse(tmp_path)
    if case == "missing":
        (folder / "alpha_pkg-1.0-py3-none-any.whl").unlink()
    elif case == "extra":
        (folder / "gamma-3.0-py3-none-any.whl").write_bytes(b"gamma")
    elif case == "sdist":
        (folder / "alpha_pkg-1.0.tar.gz").write_bytes(b"alpha source")
    else:
        text = lock.read_text()
        head, _, _ = text.rpartition("beta==2.0.post1")
        lock.write_text(head + "beta==2.0.post1" + ("\n" if case == "no hash" else " --hash=md5:0123456789abcdef\n"))
    done = verify(folder, lock)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr


@pytest.mark.parametrize("edit", ["bump", "new pin"])
def test_a_lock_made_from_other_pins_stops_the_download_with_one_line(tmp_path, edit):
    """requirements.txt changed without `make lock`: docker/wheelhouse.sh (which make images runs first) refuses
    before downloading anything (--no-index: were it to go on, pip would fail offline with another message)."""
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        text = f.read()
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(re.sub(r"(?m)^numpy==\S+", "numpy==0.0.1", text) if edit == "bump" else text + "tqdm==4.0.0\n")
    env = dict(os.environ, REQUIREMENTS=str(requirements), WHEELHOUSE_DIR=str(tmp_path / "wheelhouse"),
               PIP_EXTRA_ARGS="--no-index", LOCK_DIR=os.path.join(ROOT, "docker"))
    done = subprocess.run(["bash", SCRIPT, "flare"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "flare.lock was made from other pins" in lines[0] and "make lock" in lines[0], done.stderr
    assert not (tmp_path / "wheelhouse").exists()
