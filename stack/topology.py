"""The deployment's topology, written once: provision/project.yml's participants become the compose
services, networks, volumes and secrets of one host (docker-compose.yml) or of each participant's
own host (`make bundles`: dist/<participant>/).

    python3 stack/topology.py compose [PROJECT]          print the one-host compose file
    python3 stack/topology.py check [PROJECT]            check the project and print SITE=UI_PORT ...
                                                         (exit 2 with one line if bad)
    python3 stack/topology.py participants [PROJECT]     print the participants' names
    python3 stack/topology.py bundles PROJECT KITS DIST [NAME ...]   (root, in the FLARE image: `make bundles`)

A client participant may set `mlflow_port` (its MLflow UI on the host; default 5000 + its place among
the sites) and `tracking_uri` (default http://mlflow-<site>:5000, its own MLflow service). The UI
port can also be overridden at `make up` with MLFLOW_PORT_<SITE> (a site "north": MLFLOW_PORT_NORTH).
"""

import os
import re
import shutil
import sys
import urllib.parse

SITE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
FLARE_UID, MLFLOW_UID = 10001, 10002


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
    depends_on:{server_dep}
      mlflow-{site}: {{condition: service_healthy}}
    environment:
      FEDTRACK_TRACKING_URI: {uri}
      FEDTRACK_MLFLOW_USERNAME: forwarder
      FEDTRACK_MLFLOW_PASSWORD_FILE: /run/secrets/mlflow_forwarder_password
    secrets: [{{source: {site}-forwarder, target: mlflow_forwarder_password}}]
    volumes:
      - {{type: bind, source: '{kit}', target: /kit, read_only: true, bind: {{create_host_path: false}}}}
      - {site}-workspace:/workspace
      - ${{DATA_DIR:-./data}}:/data:ro
    networks: [fl, {site}]{extra_hosts}

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

ADMIN = """
  # On demand (`docker compose run --rm admin ...`): submits and follows jobs with the admin kit,
  # using the image's job builder and scripts. It is on the FL network only, so it cannot reach
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


def kits_dir(project: Project) -> str:
    return f"${{KITS_ROOT:-./provision/workspace}}/{project.name}/prod_00"


def compose_text(project: Project, part: str = None) -> str:
    """The compose file of the whole deployment on one host (part None), or of one participant's
    bundle (its kit in ./kit, its secrets in ./secrets, the server reached through the host)."""
    server = project.server["name"]
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
            server_dep="" if bundle else f"\n      {server}: {{condition: service_healthy}}",
            extra_hosts=dial if bundle else ""))
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


# ------------------------------------------------------------------------------ bundles

BUNDLE_MAKEFILE = """\
# {name}: `make up`, `make status`, `make down`{admin_help}. Knobs live in .env.
SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
COMPOSE ?= docker compose
include .env
export
{admin_vars}
.PHONY: up status down logs{admin_phony}
up: ## Load the bundled images the engine lacks, then {admin_up_help}
{load}\t{up}

status: ## Services and their health{admin_status_help}
\t$(COMPOSE) ps --format 'table {{{{.Service}}}}\\t{{{{.Status}}}}\\t{{{{.Ports}}}}'{status}

logs: ## Recent logs
\t$(COMPOSE) logs --tail 200

down: ## Stop and remove the containers; keep the data (volumes)
\t$(COMPOSE) --profile admin down --remove-orphans
{admin_targets}"""

ADMIN_TARGETS = """
submit: ## Submit the job (ROUNDS, DATASET, JOB_NAME, TORCH_THREADS from .env or the command line)
\t$(ADMIN) python3 job/job.py --env prod --startup-kit /kit --no-wait --name "$(JOB_NAME)" --dataset "$(DATASET)" \\
\t  --data-dir /data $(if $(ROUNDS),--rounds $(ROUNDS)) $(if $(TORCH_THREADS),--torch-threads $(TORCH_THREADS))

wait: ## Block until the newest job ends; non-zero unless it completed
\t$(ADMIN) python3 stack/flare_admin.py wait
"""

README = """\
# {name}: {role}

Made by `make bundles` from the `{project}` project. This folder is all that {name}'s host needs
besides Docker Engine with Compose v2{images_note}.

| file | what |
|---|---|
| `kit/` | {name}'s startup kit: its certificate and private key, the root CA's certificate (not its key) |
{secrets_row}| `docker-compose.yml` | {name}'s services only |
| `.env` | the knobs: set them here |
| `Makefile` | `make up`, `make status`, `make down`{admin_cmds} |
{images_row}
{steps}
"""


def bundle_files(project: Project, part: str, images: list) -> dict:
    """{relative path: text} of a participant's bundle, besides its kit and secrets."""
    server, admin = project.server["name"], project.admin["name"]
    is_admin, is_site = part == admin, part in project.sites
    env = [f"COMPOSE_PROJECT_NAME={project.name}-{re.sub('[^a-z0-9-]', '-', part.lower())}",
           "NVFLARE_VERSION=" + os.environ.get("NVFLARE_VERSION", "2.9.0")]
    if is_site:
        env += ["MLFLOW_VERSION=" + os.environ.get("MLFLOW_VERSION", "3.17.2"),
                f"# {part}'s MLflow UI, on this host's loopback", f"{port_var(part)}={project.ports[part]}",
                "# digits (bundled) needs nothing here; cifar10 needs cifar-10-batches-py/ in DATA_DIR", "DATA_DIR=./data"]
    if part == server:
        env += [f"# The address the FL port ({project.fl_port}) is published on (0.0.0.0: every interface)", "FL_BIND=0.0.0.0"]
    else:
        env += [f"# The FL server host's address (IP, or a name this host resolves); the kit dials '{server}' there",
                "FL_SERVER_ADDRESS="]
    if is_admin:
        env += ["# The job (empty: the job's default)", "JOB_NAME=fedavg-site-tracking", "ROUNDS=", "DATASET=digits",
                "# torch CPU threads per client (0: torch's default)", "TORCH_THREADS="]
    if is_admin:
        up = "$(ADMIN) python3 stack/flare_admin.py clients " + " ".join(project.sites)
        status = "\n\t$(ADMIN) python3 stack/flare_admin.py status"
    else:
        up = "$(COMPOSE) up -d --wait --wait-timeout 600"
        status = (f"\n\t$(COMPOSE) exec -T {part} python3 /opt/fedtrack/job/spool.py status /workspace/tracking-spool"
                  " || echo \"($(part) not running)\"".replace("$(part)", part)) if is_site else ""
    makefile = BUNDLE_MAKEFILE.format(
        name=part, load=load_lines(project, part, images),
        admin_up_help="check that the server answers and every site is connected" if is_admin
        else "start and wait until healthy",
        admin_help=", `make submit`, `make wait`" if is_admin else "",
        admin_vars="ADMIN = $(COMPOSE) --profile admin run --rm -T admin\n" if is_admin else "",
        admin_phony=" submit wait" if is_admin else "",
        admin_status_help="; the server's jobs" if is_admin else (", the tracking spool" if is_site else ""),
        up=up,
        status=status, admin_targets=ADMIN_TARGETS if is_admin else "")
    role = "the FL server" if part == server else ("the admin (submits jobs)" if is_admin else "a site")
    steps = ["## Steps", ""]
    if part == server:
        steps += [f"1. Open TCP port {project.fl_port} to the sites' and the admin's hosts (mTLS: only holders of a kit of this "
                  "project get in).", "2. `make up`."]
    else:
        steps += [f"1. In `.env`, set `FL_SERVER_ADDRESS` to the server host's address (its port {project.fl_port} must be "
                  "reachable from here)."]
        if is_site:
            steps += ["2. `make up`. The UI is on http://127.0.0.1:" + str(project.ports[part]) + " (log in as `admin`, "
                      "password in `secrets/mlflow/admin_password`); your metrics never leave this host."]
        else:
            steps += ["2. `make up` checks that the server answers and every site is connected; `make submit`, then "
                      "`make wait`."]
    files = {
        "docker-compose.yml": compose_text(project, part),
        ".env": "# Knobs for this bundle's `make` targets and docker compose. No secrets belong here.\n"
                + "\n".join(env) + "\n",
        "Makefile": makefile,
        "README.md": README.format(
            name=part, role=role, project=project.name,
            images_note=" (the images are in images/: `make up` loads them)" if images
            else " and the images " + ", ".join(f"`{i}`" for i in bundle_images(project, part)) + " (or a bundle made "
            "with `BUNDLE_IMAGES=1`)",
            secrets_row="| `secrets/` | the site's MLflow passwords (admin, forwarder) and session key |\n" if is_site else "",
            admin_cmds=", `make submit`, `make wait`" if is_admin else "",
            images_row="| `images/` | the Docker images (`docker save`), for an air-gapped host |\n" if images else "",
            steps="\n".join(steps)),
    }
    if is_admin:
        with open(project.path) as f:
            files["project.yml"] = f.read()  # the job takes its sites and their tracking URIs from it
    return files


def load_lines(project: Project, part: str, bundled: list) -> str:
    """Makefile lines: load each image the engine lacks from images/<name>.tar, or say what to do."""
    lines = []
    for image in bundle_images(project, part):
        if image in bundled:
            lines.append(f"\t@docker image inspect {image} >/dev/null 2>&1 || docker load -i {image_file(image)}\n")
        else:
            lines.append(f"\t@docker image inspect {image} >/dev/null 2>&1 || {{ echo \"error: image {image} is missing: "
                         f"load it (docker load), or make the bundle with BUNDLE_IMAGES=1\" >&2; exit 1; }}\n")
    return "".join(lines)


def image_file(image: str) -> str:
    """fedtrack/flare:2.9.0 -> images/flare.tar (made by stack/bundles.sh with docker save)."""
    return f"images/{image.split('/')[-1].split(':')[0]}.tar"


def bundle_images(project: Project, part: str) -> list:
    images = ["fedtrack/flare:" + os.environ.get("NVFLARE_VERSION", "2.9.0")]
    if part in project.sites:
        images.append("fedtrack/mlflow:" + os.environ.get("MLFLOW_VERSION", "3.17.2"))
    return images


def copy_tree(src: str, dst: str):
    """Copy with each file's mode and owner (kits' keys stay 0600 for the containers' user)."""
    shutil.copytree(src, dst, copy_function=shutil.copy2, symlinks=True)
    for d, dirs, files in os.walk(src):
        for name in dirs + files:
            s = os.path.join(d, name)
            st = os.lstat(s)
            os.lchown(os.path.join(dst, os.path.relpath(s, src)), st.st_uid, st.st_gid)
    st = os.stat(src)
    os.chown(dst, st.st_uid, st.st_gid)


def write_bundle(project: Project, kits: str, dist: str, part: str, owner: tuple, images: list):
    """dist/<part>/, made aside and moved in place: a second run gives the same files."""
    kit = os.path.join(kits, project.name, "prod_00", part)
    if not os.path.isfile(os.path.join(kit, "startup", "rootCA.pem")):
        raise ProjectError(f"no startup kit for {part} in {kits}; run `make provision` first")
    tmp, final = os.path.join(dist, f".{part}.new"), os.path.join(dist, part)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    copy_tree(kit, os.path.join(tmp, "kit"))
    if part in project.sites:
        copy_tree(os.path.join(kits, "secrets", part), os.path.join(tmp, "secrets"))
    for rel, text in bundle_files(project, part, images).items():
        path = os.path.join(tmp, rel)
        with open(path, "w") as f:
            f.write(text)
        os.chown(path, *owner)
    os.chown(tmp, *owner)
    # No other participant's private key and never the root CA's: a kit holds only its own.
    keys = [os.path.relpath(os.path.join(d, f), tmp) for d, _, fs in os.walk(tmp) for f in fs if f.endswith(".key")]
    assert keys == ["kit/startup/client.key"] or keys == ["kit/startup/server.key"], keys
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)


def main(argv: list) -> int:
    if not argv or argv[0] not in ("compose", "check", "participants", "bundles"):
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        project = Project(args[0] if args else os.path.join(here, "provision", "project.yml"))
        if cmd == "compose":
            sys.stdout.write(compose_text(project))
        elif cmd == "check":
            print(" ".join(f"{site}={port}" for site, port in ui_ports(project, os.environ).items()))
        elif cmd == "participants":
            print("\n".join(project.participants()))
        else:
            kits, dist, names = args[1], args[2], args[3:]
            unknown = [n for n in names if n not in project.participants()]
            if unknown:
                raise ProjectError(f"{unknown[0]} is not a participant in the project; "
                                   f"the participants are: {', '.join(project.participants())}")
            owner = tuple(int(x) for x in os.environ.get("HOST_OWNER", "0:0").split(":"))
            images = os.environ.get("BUNDLE_IMAGES_LIST", "").split()
            for part in names or project.participants():
                write_bundle(project, kits, dist, part, owner,
                             [i for i in bundle_images(project, part) if i in images])
                print(f"bundle for {part}: {os.path.join(os.environ.get('DIST_SHOWN', dist), part)}")
    except ProjectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
