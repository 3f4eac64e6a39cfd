"""One participant's bundle, for a deployment with one host each: dist/<participant>/ holds its kit
(and a site's own secrets), its compose file (stack/topology.py), .env, README and Makefile.

    python3 -m stack.bundle PROJECT KITS STAGE [NAME ...]    (on the host, from the checkout: `make bundles`)

Writes each participant's text files (compose file, .env, Makefile, README; the admin's project.yml)
into STAGE/<name>/ and prints one line per participant: NAME KIT [SECRETS], its kit folder and a
site's secrets folder, relative to KITS. stack/bundles.sh then copies those (they belong to the
containers' users: root, in a throwaway container) beside the text files into dist/<name>/.
"""

import os
import re
import sys

from fedtrack.names import DEFAULT_WORKSPACE, spool_dir
from fedtrack.pins import PinError, pin
from fedtrack.project import UI_VIEW, Project, ProjectError, port_var
from stack.topology import NO_YAML, compose_text

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

# The same knobs as the project's `make submit` (stack/up.sh job_args); empty ones take the job's defaults.
ADMIN_TARGETS = """
submit: ## Submit the job (ROUNDS, LR, LOCAL_EPOCHS, BATCH_SIZE, DATASET, JOB_NAME, TORCH_THREADS from .env or the command line)
\t$(ADMIN) fedtrack-job --env prod --startup-kit /kit --no-wait --name "$(JOB_NAME)" --dataset "$(DATASET)" \\
\t  $(if $(ROUNDS),--rounds "$(ROUNDS)") $(if $(LR),--lr "$(LR)") $(if $(LOCAL_EPOCHS),--local-epochs "$(LOCAL_EPOCHS)") \\
\t  $(if $(BATCH_SIZE),--batch-size "$(BATCH_SIZE)") $(if $(TORCH_THREADS),--torch-threads "$(TORCH_THREADS)")

wait: ## Block until the newest job ends, showing its round; non-zero unless it completed
\t@progress=lines; [ ! -t 1 ] || progress=bar; $(ADMIN) fedtrack-admin wait --progress $$progress
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


def env_file(project: Project, part: str) -> str:
    """The bundle's .env: its compose project, the images' versions (the pins), its knobs."""
    server, is_site = project.server["name"], part in project.sites
    env = [f"COMPOSE_PROJECT_NAME={project.name}-{re.sub('[^a-z0-9-]', '-', part.lower())}",
           "NVFLARE_VERSION=" + pin("nvflare")]
    if is_site:
        env += ["MLFLOW_VERSION=" + pin("mlflow"),
                f"# {part}'s MLflow UI, on this host's loopback", f"{port_var(part)}={project.ports[part]}",
                "# digits (bundled) needs nothing here; cifar10 needs cifar-10-batches-py/ in DATA_DIR", "DATA_DIR=./data",
                "# This site's tracking (empty: the defaults; a job cannot set them): the most undelivered records",
                "# its spool keeps, and seconds between samples of its hardware (0: none)",
                "SPOOL_LIMIT=", "SYSTEM_METRICS_INTERVAL="]
    if part == server:
        env += [f"# The address the FL port ({project.fl_port}) is published on (0.0.0.0: every interface)", "FL_BIND=0.0.0.0"]
    else:
        env += [f"# The FL server host's address (IP, or a name this host resolves); the kit dials '{server}' there",
                "FL_SERVER_ADDRESS="]
    if part == project.admin["name"]:
        env += ["# The job (empty: the job's defaults)", "JOB_NAME=fedavg-site-tracking", "ROUNDS=", "LR=",
                "LOCAL_EPOCHS=", "BATCH_SIZE=", "DATASET=digits",
                "# torch CPU threads per client (0: torch's default)", "TORCH_THREADS="]
    return "# Knobs for this bundle's `make` targets and docker compose. No secrets belong here.\n" + "\n".join(env) + "\n"


def makefile(project: Project, part: str, images: list) -> str:
    is_admin, is_site = part == project.admin["name"], part in project.sites
    if is_admin:
        up = "$(ADMIN) fedtrack-admin clients " + " ".join(project.sites)
        status = "\n\t$(ADMIN) fedtrack-admin status"
    else:
        up = "$(COMPOSE) up -d --wait --wait-timeout 600"
        status = (f"\n\t$(COMPOSE) exec -T {part} fedtrack-spool status {spool_dir(DEFAULT_WORKSPACE)}"
                  f" || echo \"({part} not running)\"") if is_site else ""
    return BUNDLE_MAKEFILE.format(
        name=part, load=load_lines(project, part, images),
        admin_up_help="check that the server answers and every site is connected" if is_admin
        else "start and wait until healthy",
        admin_help=", `make submit`, `make wait`" if is_admin else "",
        admin_vars="ADMIN = $(COMPOSE) --profile admin run --rm -T admin\n" if is_admin else "",
        admin_phony=" submit wait" if is_admin else "",
        admin_status_help="; the server's jobs" if is_admin else (", the tracking spool" if is_site else ""),
        up=up, status=status, admin_targets=ADMIN_TARGETS if is_admin else "")


def readme(project: Project, part: str, images: list) -> str:
    server, is_admin, is_site = project.server["name"], part == project.admin["name"], part in project.sites
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
    return README.format(
        name=part, role=role, project=project.name,
        images_note=" (the images are in images/: `make up` loads them)" if images
        else " and the images " + ", ".join(f"`{i}`" for i in bundle_images(project, part)) + " (or a bundle made "
        "with `BUNDLE_IMAGES=1`)",
        secrets_row="| `secrets/` | the site's MLflow passwords (admin, forwarder) and session key |\n" if is_site else "",
        admin_cmds=", `make submit`, `make wait`" if is_admin else "",
        images_row="| `images/` | the Docker images (`docker save`), for an air-gapped host |\n" if images else "",
        steps="\n".join(steps))


def bundle_files(project: Project, part: str, images: list) -> dict:
    """{relative path: text} of a participant's bundle, besides its kit and secrets."""
    files = {
        "docker-compose.yml": compose_text(project, part, os.environ.get("GPUS", "")),  # a site host's GPUs: the GPUS knob
        ".env": env_file(project, part),
        "Makefile": makefile(project, part, images),
        "README.md": readme(project, part, images),
    }
    if part == project.admin["name"]:
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
    """fedtrack/flare:<version> -> images/flare.tar (made by stack/bundles.sh with docker save)."""
    return f"images/{image.split('/')[-1].split(':')[0]}.tar"


def bundle_images(project: Project, part: str) -> list:
    images = ["fedtrack/flare:" + pin("nvflare")]
    if part in project.sites:
        images.append("fedtrack/mlflow:" + pin("mlflow"))
    return images


def stage(project: Project, kits: str, out: str, part: str, images: list) -> str:
    """Write part's text files into out/<part>/; return its line for stack/bundles.sh: NAME KIT [SECRETS]."""
    kit = os.path.join(project.name, "prod_00", part)
    if not os.path.isfile(os.path.join(kits, kit, "startup", "rootCA.pem")):
        raise ProjectError(f"no startup kit for {part} in {kits}; run `make provision` first")
    os.makedirs(os.path.join(out, part))
    for rel, text in bundle_files(project, part, images).items():
        with open(os.path.join(out, part, rel), "w") as f:
            f.write(text)
    return " ".join([part, kit] + ([os.path.join("secrets", part)] if part in project.sites else []))


def main(argv: list) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        project = Project(argv[0])
        kits, out, names = argv[1], argv[2], argv[3:]
        unknown = [n for n in names if n not in project.participants()]
        if unknown:
            raise ProjectError(f"{unknown[0]} is not a participant in the project; "
                               f"the participants are: {', '.join(project.participants())}")
        wanted = os.environ.get("BUNDLE_IMAGES_LIST", "").split()
        for part in names or project.participants():
            print(stage(project, kits, out, part, [i for i in bundle_images(project, part) if i in wanted]))
    except (ProjectError, PinError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if e.name != "yaml":
            raise
        print(f"error: {NO_YAML}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
