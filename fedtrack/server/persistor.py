"""The server's own model persistor: the job's model, kept in the job's own folder, weights only.

nvflare's PTFileModelPersistor takes its model as a nested component (built without the allow list),
an absolute checkpoint to load (with the job's choice of `load_weights_only`), and a checkpoint folder
from the job's environment.json. This one takes no argument: it starts from SimpleNetwork, loads
nothing it did not save, and writes only in the job's app folder.
"""

from nvflare.app_opt.pt.file_model_persistor import PTFileModelPersistor

from fedtrack.job.model import SimpleNetwork


class WorkspacePersistor(PTFileModelPersistor):
    def __init__(self):
        super().__init__(model=SimpleNetwork(), load_weights_only=True)
        # No environment.json key moves the checkpoints or names one to preload.
        self.ckpt_dir_env_key = self.ckpt_file_name_env_key = None
