"""The deployment's topology, written once: provision/project.yml's participants become the compose
services, networks, volumes and secrets of one host (docker-compose.yml) or of each participant's
own host (`make bundles`: dist/<participant>/, written by stack/bundle.py).

    python3 stack/topology.py compose [PROJECT]          print the one-host compose file
    python3 stack/topology.py check [PROJECT]            check the project and print SITE=UI_PORT ...
                                                         (exit 2 with one line if bad)
    python3 stack/topology.py plan [PROJECT]             both: the check's line, then the compose file
    python3 stack/topology.py participants [PROJECT]     print the participants' names
    python3 stack/topology.py gpus                       check GPUS and print it as `docker run --gpus` takes it

A client participant may set `mlflow_port` (its MLflow UI on the host; default 5000 + its place among
the sites) and `tracking_uri` (default http://mlflow-<site>:5000, its own MLflow service). The UI
port can also be overridden at `make up` with MLFLOW_PORT_<SITE> (a site "north": MLFLOW_PORT_NORTH).
GPUS (empty: none) gives each site's client this host's NVIDIA GPUs (`compose` and `plan` read it).
"""

import os
import re
import sys
import urllib.parse

SITE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
GPU_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*")  # an index or a UUID, as `nvidia-smi -L` lists them
# A site's UI link opens MLflow 3's "Model training" view (its GenAI view otherwise): the links `make up`
# and `make wait` print (stack/up.sh reads this line) and a site bundle's README.
UI_VIEW = "/#/experiments?workflowType=machine_learning"


class ProjectError(Exception):
    """Bad project.yml: printed as one line that says what to fix."""


class Project:
    def __init__(self, path: str):
        import yaml

        self.path = path
        try:
            with open(path) as f:
                doc = yaml.safe_load(f)
        except OSError as e:
            raise ProjectError(f"cannot read {path}: {e.strerror}")
        except yaml.YAMLError as e:
            raise ProjectError(f"{path} is not valid YAML: {str(e).splitlines()[0]}")
        if not isinstance(doc, dict) or not isinstance(doc.get("participants"), list):
            raise ProjectError(f"{path} has no participants list")
        self.name = str(doc.get("name", ""))
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", self.name):
            raise ProjectError(f"{path}: name {self.name!r}: use lowercase letters, digits, '-' and '_'")
        parts = [p for p in doc["participants"] if isinstance(p, dict)]
        servers = [p for p in parts if p.get("type") == "server"]
        admins = [p for p in parts if p.get("type") == "admin"]
        self.clients = [p for p in parts if p.get("type") == "client"]
        if len(servers) != 1:
            raise ProjectError(f"{path}: give exactly one participant of type server (found {len(servers)})")
        if not self.clients:
            raise ProjectError(f"{path}: give at least one participant of type client (a site)")
        if not admins:
            raise ProjectError(f"{path}: give a participant of type admin (it submits the jobs)")
        self.server, self.admin = servers[0], admins[0]
        self.fl_port = int(self.server.get("fed_learn_port", 8002))
        self.sites = [str(p.get("name")) for p in self.clients]
        self.ports, self.uris = {}, {}
        for n, p in enumerate(self.clients, start=1):
            site = str(p.get("name"))
            if not SITE_NAME.fullmatch(site) or site == self.server.get("name"):
                raise ProjectError(f"{path}: site name {site!r}: use lowercase letters, digits and '-' "
                                   f"(it names the site's containers, networks and volumes)")
            if site in self.ports:
                raise ProjectError(f"{path}: site {site} is listed twice; list each site once")
            port = p.get("mlflow_port", 5000 + n)
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise ProjectError(f"{path}: site {site}: mlflow_port {port!r}: give a port from 1 to 65535")
            other = [s for s, q in self.ports.items() if q == port]
            if other:
                raise ProjectError(f"{path}: site {site}: mlflow_port {port} is {other[0]}'s too; give each site its own")
            self.ports[site] = port
            uri = str(p.get("tracking_uri", f"http://mlflow-{site}:5000"))
            parsed = urllib.parse.urlsplit(uri)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ProjectError(f"{path}: site {site}: tracking_uri {uri!r}: give http(s)://HOST:PORT, "
                                   f"the site's own MLflow server")
            self.uris[site] = uri.rstrip("/")

    def participants(self) -> list:
        return [self.server["name"], *self.sites, self.admin["name"]]


def port_var(site: str) -> str:
    """The variable that overrides a site's UI port at `make up`: my-site -> MLFLOW_PORT_MY_SITE."""
    return "MLFLOW_PORT_" + site.upper().replace("-", "_")


def ui_ports(project: Project, environ: dict) -> dict:
    """{site: UI port}: the project's, or MLFLOW_PORT_<SITE> where set; each a port, each its own."""
    ports = {}
    for site in project.sites:
        var = port_var(site)
        value = environ.get(var) or str(project.ports[site])
        if not value.isdigit() or not 1 <= int(value) <= 65535:
            raise ProjectError(f"{var}={value}: give a port from 1 to 65535")
        other = [s for s, p in ports.items() if p == int(value)]
        if other:
            raise ProjectError(f"{var}={value}: {other[0]}'s MLflow already uses port {value}; give each site its own")
        ports[site] = int(value)
    return ports


def gpu_request(value: str):
    """The GPUS knob, in `docker run --gpus` terms: None (empty), "all", a count, or a list of device ids."""
    if not value:
        return None
    if value == "all":
        return "all"
    if re.fullmatch(r"[1-9][0-9]*", value):
        return int(value)
    ids = value[len("device="):].split(",") if value.startswith("device=") else []
    if not ids or not all(GPU_ID.fullmatch(i) for i in ids):
        raise ProjectError(f"GPUS={value}: give all, a number of GPUs (1 or more) or device=ID[,ID...] "
                           f"(e.g. device=0,1); leave it empty for none")
    return ids


# ------------------------------------------------------------------------------ compose text

HARDENED = """\
x-hardened: &hardened
  cap_drop: [ALL]
  security_opt: ["no-new-privileges:true"]
  read_only: true
  logging:
    driver: json-file
    options: {max-size: "10m", max-file: "3"}

x-flare: &flare
  <<: *hardened
  image: fedtrack/flare:${NVFLARE_VERSION:-2.9.0}
  entrypoint: ["fedtrack-entrypoint"]
  restart: unless-stopped
  init: true
  stop_grace_period: 20s
  tmpfs: ["/tmp:size=512m", "/home/flare:size=64m"]
"""

CLIENT = """
x-client: &client
  <<: *flare
  mem_limit: 3g
  pids_limit: 512
  healthcheck:
    # Connected to the server now, its tracking spool accepts writes, its forwarder runs
    # (docker/flare-health.py); unhealthy after 3 failed checks, once started.
    test: ["CMD", "fedtrack-health", "client"]
    interval: 5s
    timeout: 5s
    retries: 3
    start_period: 180s

x-mlflow: &mlflow
  <<: *hardened
  image: fedtrack/mlflow:${MLFLOW_VERSION:-3.17.2}
  restart: unless-stopped
  # docker/mlflow-site.py: syncs the site's accounts from its secrets, then runs MLflow behind a login.
  command: ["fedtrack-mlflow", "serve"]
  mem_limit: 1536m
  # A quarter of the FL services' CPU weight when the cores are busy (start-up, training): the job
  # goes first, the site's spool keeps every record until MLflow takes it.
  cpu_shares: 256
  pids_limit: 256
  tmpfs: ["/tmp:size=256m", "/home/mlflow:size=64m"]
  healthcheck:
    # A write with the forwarder's account under its service name (/health alone checks neither
    # the store nor MLflow's host check): docker/mlflow-site.py.
    test: ["CMD", "fedtrack-mlflow", "health"]
    interval: 10s
    timeout: 10s
    retries: 3
    start_period: 120s
"""

PROVISION = """
  # One-shot (`make provision`): makes the startup kits (mTLS certificates) and each site's MLflow
  # secrets once; skips when they exist. Root only to hand files to the containers' users.
  provision:
    <<: *hardened
    image: fedtrack/flare:${NVFLARE_VERSION:-2.9.0}
    entrypoint: ["bash", "/provision/provision.sh"]
    user: "0:0"
    cap_add: [CHOWN, DAC_OVERRIDE, FOWNER]
    tmpfs: ["/tmp"]
    environment:
      HOST_GID: ${HOST_GID:-0}
    volumes:
      - ./provision/project.yml:/provision/project.yml:ro
      - ./provision/provision.sh:/provision/provision.sh:ro
      - ${KITS_ROOT:-./provision/workspace}:/provision/workspace
      - ${CA_DIR:-./provision/ca}:/provision/ca
    network_mode: none
    restart: "no"
    profiles: [tools]
"""

SERVER = """
  server:
    <<: *flare
    mem_limit: 2g
    pids_limit: 512
    volumes:
      - {{type: bind, source: '{kit}', target: /kit, read_only: true, bind: {{create_host_path: false}}}}
      - server-workspace:/workspace
    networks: [fl]{ports}
    healthcheck:
      # The FL port (clients and admins) completes an mTLS handshake and answers (docker/flare-health.py).
      test: ["CMD", "fedtrack-health", "server"]
      interval: 5s
      timeout: 5s
      retries: 3
      start_period: 120s
"""

SITE = """
  {site}:
    <<: *client
    # Started, not healthy: the client dials the server until it answers, and its spool keeps every
    # record until its MLflow answers, so nothing waits on a healthcheck's interval.
    depends_on:{server_dep}
      mlflow-{site}: {{condition: service_started}}
    environment:
      FEDTRACK_TRACKING_URI: {uri}
      FEDTRACK_MLFLOW_USERNAME: forwarder
      FEDTRACK_MLFLOW_PASSWORD_FILE: /run/secrets/mlflow_forwarder_password
    secrets: [{{source: {site}-forwarder, target: mlflow_forwarder_password}}]
    volumes:
      - {{type: bind, source: '{kit}', target: /kit, read_only: true, bind: {{create_host_path: false}}}}
      - {site}-workspace:/workspace
      - ${{DATA_DIR:-./data}}:/data:ro
    networks: [fl, {site}]{extra_hosts}{gpus}

  mlflow-{site}:
    <<: *mlflow
    environment:
      SITE_MLFLOW: mlflow-{site}
      UI_PORT: ${{{port_var}:-{port}}}
    secrets:
      - {{source: {site}-mlflow-admin, target: mlflow_admin_password}}
      - {{source: {site}-mlflow-flask, target: mlflow_flask_secret}}
      - {{source: {site}-mlflow-forwarder, target: mlflow_forwarder_password}}
    volumes: [mlflow-{site}:/mlflow]
    ports: ["127.0.0.1:${{{port_var}:-{port}}}:5000"]
    networks: [{site}, {site}-ui]
"""

GPU = """
    # GPUS (.env): this host's NVIDIA GPUs, for training (README "GPUs").
    deploy:
      resources:
        reservations:
          devices: [{{driver: nvidia, {pick}, capabilities: [gpu]}}]"""

ADMIN = """
  # On demand (`docker compose run --rm admin ...`): submits and follows jobs with the admin kit,
  # using the image's job builder and stack/ modules. It is on the FL network only, so it cannot reach
  # any site's MLflow.
  admin:
    <<: *flare
    restart: "no"
    profiles: [admin]
    mem_limit: 1g
    pids_limit: 256
    # The kit is read-only; the Flare API unpacks downloaded job results in the kit's transfer/.
    tmpfs: ["/tmp:size=512m", "/home/flare:size=64m", "/kit/transfer:size=512m,uid=10001,gid=10001"]
    working_dir: /opt/fedtrack
    command: ["python3", "stack/flare_admin.py", "status"]
    volumes:
      - {{type: bind, source: '{kit}', target: /kit, read_only: true, bind: {{create_host_path: false}}}}
      - {project}:/opt/fedtrack/provision/project.yml:ro
    networks: [fl]{extra_hosts}
"""

ONE_HOST = """\
# The whole deployment on one host: FL server, one client per site, one MLflow server per site.
# Generated from provision/project.yml by stack/topology.py (`make up` regenerates it when the sites
# change; a test checks that it matches): edit the project, not this file.
# Networks carry the privacy promise: `fl` joins the server, the clients and the admin; each
# site's private network joins only that site's client and its MLflow server, so the server
# and the other sites can neither resolve nor reach a site's MLflow. Both are internal (no route
# out of the host); only each MLflow server is also on its own `<site>-ui` network, the one Docker
# publishes its UI port through (README: "Trust and hardening").
# Knobs live in .env; `make up` is the way in.

"""

BUNDLE = """\
# {name}'s part of the federation, on its own host (made by `make bundles` from {project_name}'s
# provision/project.yml). {what}
# Knobs live in .env; `make up` is the way in (README.md).

"""


def gpu_reservation(value: str) -> str:
    """A client service's device reservation for GPUS ("" when GPUS is empty)."""
    want = gpu_request(value)
    if want is None:
        return ""
    pick = f"device_ids: [{', '.join(repr(i) for i in want)}]" if isinstance(want, list) else f"count: {want}"
    return GPU.format(pick=pick)


def kits_dir(project: Project) -> str:
    return f"${{KITS_ROOT:-./provision/workspace}}/{project.name}/prod_00"


def compose_text(project: Project, part: str = None, gpus: str = "") -> str:
    """The compose file of the whole deployment on one host (part None), or of one participant's
    bundle (its kit in ./kit, its secrets in ./secrets, the server reached through the host); gpus is
    the GPUS knob, reserved for each site's client."""
    server = project.server["name"]
    reservation = gpu_reservation(gpus)
    bundle = part is not None
    sites = [part] if part in project.sites else ([] if bundle else project.sites)
    dial = (f'\n    extra_hosts: ["{server}:${{FL_SERVER_ADDRESS:?set FL_SERVER_ADDRESS in .env to the FL server '
            f'host\'s address}}"]')
    out = []
    if not bundle:
        out.append(ONE_HOST)
    else:
        what = {
            server: "Publishes the FL port (mTLS) on the host: the sites and the admin dial it.",
            project.admin["name"]: "Submits and follows jobs; reaches the server at FL_SERVER_ADDRESS.",
        }.get(part, "Its client dials the server at FL_SERVER_ADDRESS; its MLflow and its metrics stay here.")
        out.append(BUNDLE.format(name=part, project_name=project.name, what=what))
    out.append(HARDENED)
    if sites:
        out.append(CLIENT)
    out.append("\nservices:")
    if not bundle:
        out.append(PROVISION)
    if not bundle or part == server:
        ports = f'\n    ports: ["${{FL_BIND:-0.0.0.0}}:{project.fl_port}:{project.fl_port}"]' if bundle else ""
        out.append(SERVER.format(kit="./kit" if bundle else f"{kits_dir(project)}/{server}", ports=ports))
    for site in sites:
        out.append(SITE.format(
            site=site, uri=project.uris[site], port=project.ports[site], port_var=port_var(site),
            kit="./kit" if bundle else f"{kits_dir(project)}/{site}",
            server_dep="" if bundle else f"\n      {server}: {{condition: service_started}}",
            extra_hosts=dial if bundle else "", gpus=reservation))
    if not bundle or part == project.admin["name"]:
        out.append(ADMIN.format(
            kit="./kit" if bundle else f"{kits_dir(project)}/{project.admin['name']}",
            project="./project.yml" if bundle else "./provision/project.yml",
            extra_hosts=dial if bundle else ""))

    # Bundles are alone on their host: the FL network must route to (or from) the other hosts.
    out.append("\nnetworks:\n" + ("  fl: {}\n" if bundle else "  fl: {internal: true}\n"))
    out += [f"  {site}: {{internal: true}}\n" for site in sites]
    out += [f"  {site}-ui: {{}}\n" for site in sites]
    volumes = (["server-workspace"] if not bundle or part == server else []) + \
        [v for site in sites for v in (f"{site}-workspace", f"mlflow-{site}")]
    if volumes:
        out.append("\nvolumes:\n" + "".join(f"  {v}:\n" for v in volumes))
    if sites:
        where = "./secrets" if bundle else "${KITS_ROOT:-./provision/workspace}/secrets"
        out.append("\n# Made by `make provision` (provision/provision.sh), git-ignored, each 0600 for its container's user.\n"
                   "secrets:\n")
        for site in sites:
            s = f"{where}/{site}" if not bundle else where
            out += [f"  {site}-mlflow-admin: {{file: '{s}/mlflow/admin_password'}}\n",
                    f"  {site}-mlflow-flask: {{file: '{s}/mlflow/flask_secret'}}\n",
                    f"  {site}-mlflow-forwarder: {{file: '{s}/mlflow/forwarder_password'}}\n",
                    f"  {site}-forwarder: {{file: '{s}/client/forwarder_password'}}\n"]
    return "".join(out)


def main(argv: list) -> int:
    if not argv or argv[0] not in ("compose", "check", "plan", "participants", "gpus"):
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    knob = os.environ.get("GPUS", "")
    try:
        if cmd == "gpus":  # needs no project (nor PyYAML): `make up` checks it on the host, before any build
            want = gpu_request(knob)
            if isinstance(want, list):
                want = f'"device={",".join(want)}"'  # docker's --gpus parses CSV: ids go in double quotes
            print(want or "")
            return 0
        project = Project(args[0] if args else os.path.join(here, "provision", "project.yml"))
        if cmd == "compose":
            sys.stdout.write(compose_text(project, gpus=knob))
        elif cmd in ("check", "plan"):
            print(" ".join(f"{site}={port}" for site, port in ui_ports(project, os.environ).items()))
        if cmd == "plan":  # `make up`: one container run instead of two
            sys.stdout.write(compose_text(project, gpus=knob))
        elif cmd == "participants":
            print("\n".join(project.participants()))
    except ProjectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
