"""Positive control for the privacy test: the job as recipe.py builds it, but with nvflare's default
ConvertToFedEvent put back on every client. Run as a script; the server's MetricLeakGuard must then
count the forwarded records, which shows the guard would catch a leak.

    python tests/processes/forwarding_control.py WORKSPACE SITE=URI ...
"""

import os
import sys

from fedtrack.job.recipe import FED_FORWARDER_ID, _client_apps, build_recipe
from fedtrack.policy.install import install_for_simulator

FORWARDER = "nvflare.app_common.widgets.convert_to_fed_event.ConvertToFedEvent"

JOB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "job")


def main(workspace: str, *site_specs: str):
    sys.argv = sys.argv[:1]
    os.chdir(JOB_DIR)  # as job.py does for the simulator
    from nvflare.apis.analytix import ANALYTIC_EVENT_TYPE
    from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
    from nvflare.recipe.sim_env import SimEnv

    sites = dict(spec.split("=", 1) for spec in site_specs)
    recipe = build_recipe(sites, rounds=1, local_epochs=1, name="forwarding-control", sim=True)
    for app in _client_apps(recipe).values():
        app.app_config.add_component(FED_FORWARDER_ID, ConvertToFedEvent(events_to_convert=[ANALYTIC_EVENT_TYPE]))
    install_for_simulator(os.path.join(workspace, recipe.name), extra=(FORWARDER,))
    recipe.run(SimEnv(clients=list(sites), num_threads=len(sites), workspace_root=workspace)).get_result()


if __name__ == "__main__":
    main(*sys.argv[1:])
