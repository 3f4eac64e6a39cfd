"""A site's MLflow run ends in the state the README's table "Every job ends in a true state" promises
(fedtrack.site.receiver.site_status): one case per row, plus the rules under the table."""

import pytest

from fedtrack.site.receiver import site_status


@pytest.mark.parametrize("server_says, aborted, fatal, status", [
    # the job completes: RunOutcome says FINISHED
    ("FINISHED", False, False, "FINISHED"),
    # an admin aborts it: RunOutcome sees the abort signal and says KILLED; the site saw the abort too
    ("KILLED", True, False, "KILLED"),
    # a client is killed mid-job: RunOutcome fails the run, and the surviving sites hear FAILED
    ("FAILED", False, False, "FAILED"),
    # the FL server restarted: no word comes, and nvflare aborts the sites' part
    (None, True, False, "KILLED"),
    # training fails at this site (a fatal error here), whatever the server says after
    (None, False, True, "FAILED"),
    ("FAILED", False, True, "FAILED"),
    # the server's workflow fails: it says FAILED
    ("FAILED", True, False, "FAILED"),
    # a site that hears nothing ends its run FAILED, or KILLED when it was aborted
    (None, False, False, "FAILED"),
    # a word that is no run status counts as none
    ("COMPLETED", False, False, "FAILED"),
    ("COMPLETED", True, False, "KILLED"),
    # a fatal error at the site wins over what the server says
    ("FINISHED", False, True, "FAILED"),
    ("KILLED", True, True, "FAILED"),
])
def test_a_sites_run_ends_in_the_state_the_readme_promises(server_says, aborted, fatal, status):
    assert site_status(server_says, aborted, fatal) == status
