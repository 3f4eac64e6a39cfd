#!/usr/bin/env python3
"""A site's MLflow tracking server behind a login (installed in the MLflow image as `fedtrack-mlflow`).

    fedtrack-mlflow serve           sync the site's accounts, then run `mlflow server --app-name basic-auth`
    fedtrack-mlflow health          exit 0 when the server takes a write with the forwarder's account, under its
                                    service name (a tag on a run no experiment list shows; see below)
    fedtrack-mlflow add-user NAME   make a UI account that can read the site's runs; prints its password once

Secrets are files made at provisioning and handed in as Compose secrets (never environment lines,
build arguments or image layers): /run/secrets/mlflow_admin_password, mlflow_flask_secret and
mlflow_forwarder_password. The account store lives on the site's volume (/mlflow/auth.db). Every
account reads every run of the site (default_permission READ); the forwarder's account, which is
not an admin, writes the experiments it creates; anonymous requests get 401.

The healthcheck (the container's, every 10 s) writes through the REST API, as the forwarder, to the
service name: the tag last_write_check on the one run of the experiment fedtrack-healthcheck. That
experiment is kept deleted, so the site's experiment list (the UI, and experiments/search in its
default view, ACTIVE_ONLY) holds only the site's work; its run is kept active, because MLflow takes a
run's writes by the run's own state. An earlier version left that experiment visible, with no run:
the first check gives it its run and deletes it. No other experiment is touched.

Environment: SITE_MLFLOW (the service name) and UI_PORT (the published port); MLFLOW_HOST and
MLFLOW_PORT (where it listens: 0.0.0.0 and 5000 in its container; the tests use 127.0.0.1 and a
free port).
"""

import base64
import json
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request

SECRETS = os.environ.get("SECRETS_DIR", "/run/secrets")
DATA = os.environ.get("MLFLOW_DATA", "/mlflow")
AUTH_DB = f"sqlite:///{DATA}/auth.db"
ADMIN, FORWARDER = "admin", "forwarder"
HEALTH_EXPERIMENT = "fedtrack-healthcheck"  # kept deleted; its one run takes the check's writes
HEALTH_RUN_TAG = "fedtrack.health_run_id"  # on that experiment: the id of its run
HEALTH_NOTE = ("Written by the site's healthcheck: a tag on its one run every 10 s, proof that the store takes the "
               "forwarder's writes. Kept deleted, so that no experiment list shows it.")
INI = os.environ.get("MLFLOW_AUTH_INI", "/tmp/fedtrack-auth.ini")  # a tmpfs: the root filesystem is read-only
PORT = os.environ.get("MLFLOW_PORT", "5000")  # where it listens in its container (the tests: a free port)
# The passwords go to the site's own server, never through a proxy the environment names (urllib's default,
# also for a service name). (The image has no fedtrack package: fedtrack/direct.py's opener, spelled here.)
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def secret(name: str) -> str:
    path = os.path.join(SECRETS, name)
    try:
        with open(path) as f:
            value = f.read().strip()
    except OSError as e:
        sys.exit(f"error: secret {path} is missing or unreadable ({e.strerror}); run `make provision`")
    if len(value) < 12:
        sys.exit(f"error: secret {path} is shorter than 12 characters; run `make clean-kits` and `make provision`")
    return value


def base_url() -> str:
    return f"http://{os.environ['SITE_MLFLOW']}:{PORT}"


def call(method: str, path: str, body: dict = None, user: str = ADMIN, password: str = None, timeout: float = 10):
    token = base64.b64encode(f"{user}:{password or secret('mlflow_admin_password')}".encode()).decode()
    req = urllib.request.Request(base_url() + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    with DIRECT.open(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


def sync_accounts(admin_password: str, forwarder_password: str):
    """The admin and forwarder accounts carry the passwords provisioned now (also after new kits)."""
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(AUTH_DB)
    for user, password, is_admin in ((ADMIN, admin_password, True), (FORWARDER, forwarder_password, False)):
        if not store.has_user(user, use_primary=True):
            store.create_user(user, password, is_admin=is_admin)
        elif not store.authenticate_user(user, password, use_primary=True):
            store.update_user(user, password=password)


def serve() -> int:
    admin_password = secret("mlflow_admin_password")
    with open(os.open(INI, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = {AUTH_DB}\nadmin_username = {ADMIN}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    # For MLflow in this process only (set before any import of mlflow.server.auth, which reads them
    # then): read from the secret files, never set in Compose.
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = INI
    os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"] = admin_password
    os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secret("mlflow_flask_secret")
    sync_accounts(admin_password, secret("mlflow_forwarder_password"))
    site, port = os.environ["SITE_MLFLOW"], os.environ["UI_PORT"]
    # Admits its client by service name and the host's browser by the published port (MLflow >= 3.5
    # answers 403 "Invalid Host header" to any other name); cross-origin requests from the UI's own
    # origin only (only_origins).
    ui_origins = [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
    args = ["server", "--app-name", "basic-auth", "--host", os.environ.get("MLFLOW_HOST", "0.0.0.0"), "--port", PORT,
            "--workers", os.environ.get("MLFLOW_WORKERS", "1"),
            "--backend-store-uri", f"sqlite:///{DATA}/mlflow.db",
            "--artifacts-destination", f"{DATA}/artifacts", "--serve-artifacts",
            "--allowed-hosts", f"{site},{site}:{PORT},localhost:{port},127.0.0.1:{port}",
            "--cors-allowed-origins", ",".join(ui_origins)]
    only_origins(ui_origins)
    # `mlflow server` checks its options, migrates the store, then runs uvicorn as a child and stays as
    # its parent (~240 MB doing nothing). Here uvicorn runs in this process instead, with the modules
    # already imported (ready in half the time), one worker (no supervisor; SQLite wants one writer):
    # half the site's idle memory.
    import mlflow.server
    from mlflow.cli import cli

    if not callable(getattr(mlflow.server, "_exec_cmd", None)):  # another MLflow: its own way (and CORS lists)
        os.execvp("mlflow", ["mlflow"] + args)
    mlflow.server._exec_cmd = _run_here
    return cli.main(args=args, prog_name="mlflow")


def only_origins(origins: list):
    """MLflow answers credentialed cross-origin requests from --cors-allowed-origins and, whatever that
    says, from every http://localhost:*, 127.0.0.1:* and [::1]:* origin (mlflow.server.security_utils),
    so a page on any other loopback port could read the site's runs with a logged-in user's login. Here
    its loopback lists are these origins alone (read when the app is made, in this process: the lists
    are changed in place, so every module that imported them sees it)."""
    from mlflow.server import security_utils

    try:
        security_utils.LOCALHOST_ORIGIN_PATTERNS[:] = [f"^{re.escape(o)}$" for o in origins]
        security_utils.CORS_LOCALHOST_HOSTS[:] = []  # no origin passes as "localhost" past the list
    except (AttributeError, TypeError):
        sys.exit("error: this MLflow's CORS lists are not where docker/mlflow-site.py limits them; "
                 "check its CORS origins (tests/processes/test_cors.py) before using it")


def _run_here(cmd, extra_env=None, **_):
    """What `mlflow server` would start as its child (`python -m uvicorn ...`), run in this process."""
    os.environ.update(extra_env or {})
    if cmd[1:3] != ["-m", "uvicorn"]:
        os.execvp(cmd[0], cmd)
    from uvicorn.main import main as uvicorn_main

    sys.exit(uvicorn_main.main(args=cmd[3:], prog_name="uvicorn"))


def health() -> int:
    """A write with the forwarder's account, under the service name its forwarder uses: MLflow
    answers, its host check admits the site, the login works and the store takes a write."""
    password = secret("mlflow_forwarder_password")

    def rest(method: str, path: str, body: dict = None) -> dict:
        return call(method, path, body, user=FORWARDER, password=password, timeout=4)

    try:
        run_id = health_run(rest)
        tag = {"run_id": run_id, "key": "last_write_check", "value": f"{time.time():.3f}"}
        try:
            rest("POST", "/api/2.0/mlflow/runs/set-tag", tag)
        except urllib.error.HTTPError as e:
            if e.code != 400:  # 400: the run is deleted, by a check cut short after deleting its experiment
                raise
            rest("POST", "/api/2.0/mlflow/runs/restore", {"run_id": run_id})
            rest("POST", "/api/2.0/mlflow/runs/set-tag", tag)
        return 0
    except (OSError, ValueError, KeyError) as e:
        detail = e.read(200).decode(errors="replace") if isinstance(e, urllib.error.HTTPError) else ""
        print(" ".join(f"unhealthy: the forwarder's write was not taken: {e} {detail}".split()), file=sys.stderr)
        return 1


def health_run(rest) -> str:
    """The id of the run the healthcheck writes to. Its experiment, HEALTH_EXPERIMENT, is kept deleted:
    MLflow takes no tag on a deleted experiment, and deletes its runs with it, but a run restored
    after that takes writes. Made by the first check, also from an earlier version's visible
    experiment; a check cut short leaves what the next one finishes."""
    try:
        exp = rest("GET", f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={HEALTH_EXPERIMENT}")["experiment"]
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
        exp_id = rest("POST", "/api/2.0/mlflow/experiments/create", {
            "name": HEALTH_EXPERIMENT, "tags": [{"key": "mlflow.note.content", "value": HEALTH_NOTE}]})["experiment_id"]
        exp = {"experiment_id": exp_id, "lifecycle_stage": "active"}
    exp_id = exp["experiment_id"]
    run_id = {t["key"]: t["value"] for t in exp.get("tags", [])}.get(HEALTH_RUN_TAG)
    if exp["lifecycle_stage"] != "active":
        if run_id:  # the steady state: two requests per check, this one and the write
            return run_id
        rest("POST", "/api/2.0/mlflow/experiments/restore", {"experiment_id": exp_id})  # deleted by hand, with no run
    if not run_id:  # new, or an earlier version's (no runs)
        run_id = rest("POST", "/api/2.0/mlflow/runs/create",
                      {"experiment_id": exp_id, "run_name": "write-check"})["run"]["info"]["run_id"]
        rest("POST", "/api/2.0/mlflow/experiments/set-experiment-tag",
             {"experiment_id": exp_id, "key": HEALTH_RUN_TAG, "value": run_id})
    rest("POST", "/api/2.0/mlflow/experiments/delete", {"experiment_id": exp_id})  # out of every list; deletes its run
    rest("POST", "/api/2.0/mlflow/runs/restore", {"run_id": run_id})
    return run_id


def add_user(name: str) -> int:
    if not name or len(name) > 64 or not all(c.isalnum() or c in "._@-" for c in name):
        print(f"error: user name {name!r}: use up to 64 letters, digits, '.', '_', '@' or '-'", file=sys.stderr)
        return 2
    if name in (ADMIN, FORWARDER):
        print(f"error: {name!r} is reserved for the site's own services; choose another name", file=sys.stderr)
        return 2
    password = secrets.token_urlsafe(18)
    try:
        call("POST", "/api/2.0/mlflow/users/create", {"username": name, "password": password})
    except urllib.error.HTTPError as e:
        detail = e.read(300).decode(errors="replace")
        if "RESOURCE_ALREADY_EXISTS" in detail or "already exists" in detail:
            print(f"error: user {name!r} already exists at {os.environ['SITE_MLFLOW']}; choose another name", file=sys.stderr)
        else:
            print(f"error: could not create user {name!r}: HTTP {e.code} {detail.strip()}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: the site's MLflow server does not answer ({e}); start it with `make up`", file=sys.stderr)
        return 1
    print(f"user {name} created; password (shown once, keep it safe): {password}")
    return 0


def main(argv) -> int:
    if argv[:1] == ["serve"] and len(argv) == 1:
        return serve()
    if argv[:1] == ["health"] and len(argv) == 1:
        return health()
    if argv[:1] == ["add-user"] and len(argv) == 2:
        return add_user(argv[1])
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
