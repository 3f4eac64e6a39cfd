"""What a site decides for itself, read from its own environment (compose, a local process's launcher,
or the simulator on the developer's host), never from a job: where its data is, its tracking server,
how many undelivered records it keeps, how often it samples its hardware, which datasets it trains on.

Each value is checked here once; a bad one is a SiteSettingError naming the variable and what to give.
"""

import os

from fedtrack.knobs import DATASETS, DEFAULTS, SITE, KnobError
from fedtrack.spool.store import DEFAULT_MAX_RECORDS

# The site's own MLflow is names.SITE_URI_ENV (fedtrack.spool.delivery reads it); the rest are here.
PREFIX = "FEDTRACK_"
DATA_DIR_ENV = PREFIX + "DATA_DIR"
SPOOL_LIMIT_ENV = PREFIX + "SPOOL_LIMIT"
SYSTEM_METRICS_ENV = PREFIX + "SYSTEM_METRICS_INTERVAL"
DATASETS_ENV = PREFIX + "DATASETS"


class SiteSettingError(ValueError):
    """A site setting its operator got wrong: one line naming the variable and what to give."""


def _env(name: str, default):
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return SITE[name[len(PREFIX):]].check(text, name)
    except KnobError as e:
        raise SiteSettingError(f"site setting {e}") from None


def data_dir() -> str:
    """Where this site's datasets are (the client container's /data; the simulator: the host's folder)."""
    return os.environ.get(DATA_DIR_ENV, "").strip() or os.path.abspath(DEFAULTS["data_dir"])


def spool_limit() -> int:
    """The most undelivered tracking records this site keeps for a job before training waits."""
    return _env(SPOOL_LIMIT_ENV, DEFAULT_MAX_RECORDS)


def system_metrics_interval() -> float:
    """Seconds between samples of this site's CPU, memory and GPUs into its own run (0: none)."""
    return _env(SYSTEM_METRICS_ENV, DEFAULTS["system_metrics_interval"])


def datasets() -> tuple:
    """The datasets this site trains on (all it knows, unless its operator names fewer)."""
    text = os.environ.get(DATASETS_ENV, "").strip()
    if not text:
        return DATASETS
    chosen = tuple(d.strip() for d in text.split(",") if d.strip())
    unknown = [d for d in chosen if d not in DATASETS]
    if unknown or not chosen:
        raise SiteSettingError(f"site setting {DATASETS_ENV}={text}: give a comma-separated list of {', '.join(DATASETS)}")
    return chosen
