"""One participant's bundle, for a deployment with one host each: dist/<participant>/ holds its kit
(and a site's own secrets), its compose file (stack/topology.py), .env, README and Makefile.

    python3 stack/bundle.py PROJECT KITS DIST [NAME ...]    (root, in the FLARE image: `make bundles`)

Root because the kits' keys are readable by the containers' user alone; each copy keeps its owner
and mode, and the bundle's other files go to HOST_OWNER (uid:gid).
"""

import os
import re
import shutil
import sys

from topology import UI_VIEW, Project, ProjectError, compose_text, port_var

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

wait: ## Block until the newest job ends, showing its round; non-zero unless it completed
\t@progress=lines; [ ! -t 1 ] || progress=bar; $(ADMIN) python3 stack/flare_admin.py wait --progress $$progress
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
            steps += [f"2. `make up`. The UI is on http://127.0.0.1:{project.ports[part]}{UI_VIEW} (log in as `admin`, "
                      "password in `secrets/mlflow/admin_password`); your metrics never leave this host."]
        else:
            steps += ["2. `make up` checks that the server answers and every site is connected; `make submit`, then "
                      "`make wait`."]
    files = {
        "docker-compose.yml": compose_text(project, part, os.environ.get("GPUS", "")),  # a site host's GPUs: the GPUS knob
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
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        project = Project(argv[0])
        kits, dist, names = argv[1], argv[2], argv[3:]
        unknown = [n for n in names if n not in project.participants()]
        if unknown:
            raise ProjectError(f"{unknown[0]} is not a participant in the project; "
                               f"the participants are: {', '.join(project.participants())}")
        owner = tuple(int(x) for x in os.environ.get("HOST_OWNER", "0:0").split(":"))
        images = os.environ.get("BUNDLE_IMAGES_LIST", "").split()
        for part in names or project.participants():
            write_bundle(project, kits, dist, part, owner, [i for i in bundle_images(project, part) if i in images])
            print(f"bundle for {part}: {os.path.join(os.environ.get('DIST_SHOWN', dist), part)}")
    except ProjectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
