"""The timers the tests shorten (a site's lost-job rule, a forwarder's retry cap, the health checks'
interval) keep their production values when nobody sets them, and a setting reaches the code."""

import subprocess
import sys

import yaml

from fedtrack.knobs import DEFAULTS, STACK, KnobError
from fedtrack.names import ALIVE_PER_LOST, LOST_AFTER, RETRY_CAP_ENV
from fedtrack.spool import forwarder
from support import ROOT


def test_production_values():
    assert LOST_AFTER == 60.0 and DEFAULTS["lost_after"] == LOST_AFTER  # nvflare's grace for a dead job
    assert LOST_AFTER / ALIVE_PER_LOST == 10.0  # a site says "alive" every 10 s
    assert forwarder.BACKOFF == (0.5, 1, 2, 5, 10, 20, 30)


def test_the_retry_cap_comes_from_the_site_and_caps_every_wait(monkeypatch):
    monkeypatch.delenv(RETRY_CAP_ENV, raising=False)
    assert [forwarder.backoff(n) for n in range(1, 10)] == [0.5, 1, 2, 5, 10, 20, 30, 30, 30]
    monkeypatch.setenv(RETRY_CAP_ENV, "")  # compose passes the stack's empty setting as ""
    assert forwarder.backoff(9) == 30
    monkeypatch.setenv(RETRY_CAP_ENV, "5")
    assert [forwarder.backoff(n) for n in range(1, 10)] == [0.5, 1, 2, 5, 5, 5, 5, 5, 5]


def test_the_compose_file_leaves_the_timers_at_their_production_values_unless_set():
    with open(f"{ROOT}/docker-compose.yml") as f:
        compose = yaml.safe_load(f)
    services = compose["services"]
    clients = [s for s in services.values() if s.get("environment", {}).get("FEDTRACK_TRACKING_URI")]
    assert clients
    for svc in clients:
        assert svc["environment"]["FEDTRACK_RETRY_CAP"] == "${DELIVERY_RETRY_CAP:-}"  # empty: BACKOFF's last
        assert svc["healthcheck"]["interval"] == "${HEALTHCHECK_INTERVAL:-5}s"
    assert services["server"]["healthcheck"]["interval"] == "${HEALTHCHECK_INTERVAL:-5}s"


def test_the_stack_timers_are_checked_like_every_knob():
    for var, value in (("DELIVERY_RETRY_CAP", "0"), ("HEALTHCHECK_INTERVAL", "2.5"), ("HEALTHCHECK_INTERVAL", "5s")):
        result = subprocess.run([sys.executable, "-m", "fedtrack.knobs"], capture_output=True, text=True, cwd=ROOT,
                                env={"PATH": "/usr/bin:/bin", var: value})
        assert result.returncode == 2 and result.stderr.strip() == f"error: {var}={value}: give {STACK[var].give}", result.stderr
    try:
        STACK["DELIVERY_RETRY_CAP"].check("nan", "DELIVERY_RETRY_CAP")
        raise AssertionError("nan passed")
    except KnobError:
        pass
