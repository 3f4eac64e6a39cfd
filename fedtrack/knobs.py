"""Every knob of the job, checked in one place: `make check`, `make up` and `make submit` (on the host,
before anything is built or started: `python3 -m fedtrack.knobs`, stdlib only) and `fedtrack-job`
(its flags) use the same bounds and say the same thing about a bad value, in one line.

    python3 -m fedtrack.knobs      check the knobs set in the environment (ROUNDS, LR, ...); exit 2 with
                                   one line naming the first bad one and what to give instead
"""

import os
import re
import sys
from dataclasses import dataclass

from fedtrack.names import LOST_AFTER

JOB_NAME = "fedavg-site-tracking"
DATASETS = ("digits", "cifar10")
# The training defaults, stated once: the job CLI's, the recipe's and (empty knobs) `make up`'s.
DEFAULTS = {"rounds": 5, "local_epochs": 2, "lr": 0.02, "batch_size": 32, "dataset": "digits", "data_dir": "data",
            "system_metrics_interval": 10.0,  # seconds between samples of a site's CPU, memory, GPUs (MLflow's own)
            "lost_after": LOST_AFTER}  # seconds of a site's silence that fail the job


class KnobError(ValueError):
    """A bad knob: its one line says what to give instead."""


@dataclass(frozen=True)
class Knob:
    name: str  # the job setting (and --flag) it sets
    kind: type  # int, float or str
    low: float = None
    high: float = None
    pattern: str = None
    choices: tuple = ()
    give: str = ""  # what to give, for the error line

    def check(self, text: str, label: str):
        """The value of `text`, or a KnobError naming `label` (a variable or a flag)."""
        text = str(text).strip()
        bad = KnobError(f"{label}={text}: give {self.give}")
        if self.kind is int and not re.fullmatch(r"[0-9]{1,12}", text):  # no sign, exponent or base
            raise bad
        if self.kind is float and not re.fullmatch(r"([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", text):
            raise bad  # also no nan or inf, which pass no bound check
        value = self.kind(text)
        if (self.low is not None and not value >= self.low) or (self.high is not None and not value <= self.high):
            raise bad
        if (self.pattern and not re.fullmatch(self.pattern, text)) or (self.choices and value not in self.choices):
            raise bad
        return value


# Exclusive lower bounds are written as the smallest value allowed (LR: above 0).
KNOBS = {
    "ROUNDS": Knob("rounds", int, 1, 10000, give="a whole number of rounds from 1 to 10000"),
    "LOCAL_EPOCHS": Knob("local_epochs", int, 1, 1000, give="a whole number of epochs per round from 1 to 1000"),
    "BATCH_SIZE": Knob("batch_size", int, 1, 65536, give="a whole number from 1 to 65536"),
    "LR": Knob("lr", float, 1e-12, 10, give="a learning rate above 0 and at most 10 (e.g. 0.02)"),
    "DATASET": Knob("dataset", str, choices=DATASETS, give="digits (bundled) or cifar10"),
    "JOB_NAME": Knob("name", str, pattern=r"[a-z0-9][a-z0-9_-]{0,62}",
                     give="lowercase letters, digits, '-' and '_' (at most 63, starting with a letter or digit)"),
    "TORCH_THREADS": Knob("torch_threads", int, 0, 1024, give="a whole number of threads from 0 (torch's default) to 1024"),
}
# Settings of the stack (compose reads them; `make check` checks them): timers a test shortens.
# Their production values are the code's (fedtrack.spool.forwarder.BACKOFF) and the compose template's.
STACK = {
    "DELIVERY_RETRY_CAP": Knob("retry_cap", float, 0.5, 3600,
                               give="the longest wait in seconds between a forwarder's tries, from 0.5 to 3600 (default 30)"),
    "HEALTHCHECK_INTERVAL": Knob("healthcheck_interval", int, 1, 300,
                                 give="whole seconds between the FL services' health checks, from 1 to 300 (default 5)"),
}
# Settings of job.py alone, checked the same way.
JOB_ONLY = {
    "lost_after": Knob("lost_after", float, 6, 3600,
                       give="seconds of a site's silence after which the job fails, from 6 to 3600 (default 60)"),
    "register_model": Knob("register_model", str, pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}",
                           give="a registered model name of letters, digits, '.', '-' and '_'"),
    # Which part of the bundled data a site trains on (fedtrack.job.data.partition), written by the job.
    "num_sites": Knob("num_sites", int, 1, 10000, give="a whole number of sites from 1 to 10000"),
    "site_index": Knob("site_index", int, 0, 9999, give="a whole number from 0 to 9999, below num_sites"),
}
# Settings a site makes for itself, never a job (fedtrack.site.settings reads them from the site's own
# environment as FEDTRACK_<name>; the stack passes these from .env to every site it runs).
SITE = {
    "SPOOL_LIMIT": Knob("spool_limit", int, 1, 100_000_000,
                        give="the most undelivered records a site keeps, a whole number from 1 to 100000000"),
    "SYSTEM_METRICS_INTERVAL": Knob("system_metrics_interval", float, 0, 3600,
                                    give="0 (none) or seconds between samples of a site's hardware, at most 3600"),
}


def knob(name: str) -> Knob:
    """The knob of a job setting (`rounds`, `lr`, ...)."""
    for k in (*KNOBS.values(), *JOB_ONLY.values()):
        if k.name == name:
            return k
    raise KeyError(name)


def check_environ(environ) -> dict:
    """{setting: value} of every knob (and stack setting) set (non-empty) in environ; a KnobError for the first bad one."""
    return {k.name: k.check(environ[var], var) for var, k in {**KNOBS, **STACK, **SITE}.items() if environ.get(var, "").strip()}


def main() -> int:
    try:
        check_environ(os.environ)
    except KnobError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
