"""The site's own training executor: the one way a job trains at a site.

nvflare's ClientAPIExecutor takes a script path, an execution mode, a command and script arguments
(in which nvflare resolves `${secret:...}`), every one of them the job's to choose. This subclass
takes only typed training settings, checks each against the bounds the site installed
(fedtrack.policy.validator, also run at deploy), and runs the training script installed with this
package, in the site's job process, with the site's own data folder.
"""

import os
import shlex

from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor

from fedtrack.policy.validator import check_training
from fedtrack.site import settings

# The vetted training script: the copy installed with this package, never a path from a job.
TRAINING_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "job", "client.py")


class SiteTrainer(ClientAPIExecutor):
    def __init__(self, dataset: str, lr: float, local_epochs: int, batch_size: int, site_index: int = 0,
                 num_sites: int = 1, torch_threads: int = 0, register_model: str = ""):
        # Kept under their own names: nvflare's job exporter writes them back as this class's arguments.
        self.dataset, self.lr, self.local_epochs, self.batch_size = dataset, lr, local_epochs, batch_size
        self.site_index, self.num_sites, self.torch_threads, self.register_model = site_index, num_sites, torch_threads, register_model
        given = {"dataset": dataset, "lr": lr, "local_epochs": local_epochs, "batch_size": batch_size,
                 "site_index": site_index, "num_sites": num_sites, "torch_threads": torch_threads,
                 "register_model": register_model}
        problem = check_training(given)
        if problem:
            raise ValueError(problem)
        super().__init__(
            execution_mode="in_process",  # in the job process: no command, and no fed events to the server
            task_script_path=TRAINING_SCRIPT,
            task_script_args=script_args(given, settings.data_dir()),
            params_exchange_format="pytorch",
        )


def script_args(given: dict, data_dir: str) -> str:
    """client.py's command line from checked settings (each quoted: nothing in it is read as a reference)."""
    args = ["--dataset", given["dataset"], "--data-dir", data_dir, "--local-epochs", given["local_epochs"],
            "--lr", given["lr"], "--batch-size", given["batch_size"], "--site-index", given["site_index"],
            "--num-sites", given["num_sites"]]
    if given["torch_threads"]:
        args += ["--torch-threads", given["torch_threads"]]
    if given["register_model"]:
        args += ["--register-model", given["register_model"]]
    return " ".join(shlex.quote(str(a)) for a in args)
