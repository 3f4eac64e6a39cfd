"""FailureLog: failed spool writes of one job, kept where a full spool volume cannot stop them."""

import glob
import hashlib
import json
import os
import tempfile
import time


class FailureLog:
    """Failed spool writes of one job, kept where a full spool volume cannot stop them: a small
    file in the temp folder (a tmpfs in the site's container), read by `status` and the healthcheck."""

    def __init__(self, spool_dir: str, job_key: str):
        self.spool_dir = os.path.abspath(spool_dir)
        self.job = job_key
        self.path = self._prefix(spool_dir) + job_key + ".json"
        self.open = False
        self._written = 0.0

    def record(self, failed: int, error: Exception = None, force: bool = False):
        self.open = True
        now = time.monotonic()
        if error is None and not force and now - self._written < 1.0:
            return  # at most one write a second while every log call fails: the count lags by up to 1 s
        self._written = now
        self._write({"spool": self.spool_dir, "job": self.job, "failed": failed, "failing": True,
                     "error": str(error) if error else None, "at": int(time.time())})

    def clear(self, failed: int):
        self.open = False
        self._write({"spool": self.spool_dir, "job": self.job, "failed": failed, "failing": False, "error": None, "at": int(time.time())})

    def _write(self, state: dict):
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(state, f)
            os.replace(tmp, self.path)
        except OSError:
            pass  # the temp folder itself is full: the count still reaches the spool when it can

    @staticmethod
    def _prefix(spool_dir: str) -> str:
        """Where the failure files of spool_dir's jobs go: one folder, named apart per spool."""
        digest = hashlib.sha1(os.path.abspath(spool_dir).encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), "fedtrack-spool-failures", digest + "-")

    @staticmethod
    def read(spool_dir: str) -> list:
        states = []
        for path in glob.glob(FailureLog._prefix(spool_dir) + "*.json"):
            try:
                with open(path) as f:
                    states.append(json.load(f))
            except (OSError, ValueError):
                pass
        return states

