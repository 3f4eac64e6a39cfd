"""The version pins of requirements.txt, read in one place (stdlib only: the host's python3 runs it).

    python3 -m fedtrack.pins NAME        print NAME's pinned version (exit 2 with one line if none)

The images' tags follow these pins: fedtrack/flare:<nvflare's>, fedtrack/mlflow:<mlflow's>.
"""

import os
import re
import sys

# The checkout's requirements.txt, beside this package (REQUIREMENTS: another, as docker/build-images.sh takes it).
REQUIREMENTS = os.environ.get("REQUIREMENTS") or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                              "requirements.txt")
# name[extras]==version, as requirements.txt writes a pin.
PIN_LINE = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[A-Za-z0-9,._-]*\])?==(\S+)")
# A version also names an image tag (Docker allows letters, digits, '_', '.', '-'), so no more than that.
VERSION = re.compile(r"[0-9][A-Za-z0-9_.-]{0,127}")


class PinError(Exception):
    """A missing or unusable pin: printed as one line that says what to fix."""


def canonical(name: str) -> str:
    """PEP 503's form of a package name: MLflow, ml_flow and ml.flow are the same."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: str = None) -> dict:
    """{canonical name: version} of every `name==version` line of path (default: the checkout's)."""
    path = path or REQUIREMENTS
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise PinError(f"cannot read {path}: {e.strerror}")
    found = {}
    for line in lines:
        m = PIN_LINE.fullmatch(line.split("#", 1)[0].strip())
        if m:
            found[canonical(m[1])] = m[3]
    return found


def pin(name: str, path: str = None) -> str:
    """NAME's pinned version in requirements.txt (path, default: the checkout's)."""
    path = path or REQUIREMENTS
    version = pins(path).get(canonical(name))
    if version is None:
        raise PinError(f"{path}: no pin for {name}; add a line {name}==VERSION")
    if not VERSION.fullmatch(version):
        raise PinError(f"{path}: {name}=={version}: give a plain version (digits, letters, '.', '-', '_'): it tags an image")
    return version


def main(argv: list) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(pin(argv[0]))
    except PinError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
