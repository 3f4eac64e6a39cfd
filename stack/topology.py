"""The deployment's topology, written once: provision/project.yml's participants become the compose
services, networks, volumes and secrets of one host (docker-compose.yml) or of each participant's own
host (`make bundles`: dist/<participant>/, written by stack/bundle.py). Runs on the host, from the
checkout's root, with python3 and PyYAML:

    python3 -m stack.topology compose [PROJECT]          print the one-host compose file
    python3 -m stack.topology check [PROJECT]            check the project and print SITE=UI_PORT ...
                                                         (exit 2 with one line if bad)
    python3 -m stack.topology plan [PROJECT]             both: the check's line, then the compose file
    python3 -m stack.topology participants [PROJECT]     print the participants' names
    python3 -m stack.topology gpus                       check GPUS and print it as `docker run --gpus` takes it
    python3 -m stack.topology ui-view                    print the path a site's UI link ends with

The compose file is data: stack/compose.template.yml, loaded, with each checked value of the project
(fedtrack/project.py) put in its place and the result written by PyYAML; no value is pasted into text.
A client participant may set `mlflow_port` (its MLflow UI on the host; default 5000 + its place among
the sites) and `tracking_uri` (default http://mlflow-<site>:5000, its own MLflow service). The UI
port can also be overridden at `make up` with MLFLOW_PORT_<SITE> (a site "north": MLFLOW_PORT_NORTH).
GPUS (empty: none) gives each site's client this host's NVIDIA GPUs (`compose` and `plan` read it).
"""

import itertools
import os
import re
import sys

from fedtrack import pins
from fedtrack.project import UI_VIEW, Project, ProjectError, gpu_request, port_var, ui_ports

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = os.path.join(HERE, "compose.template.yml")
DEFAULT_PROJECT = os.path.join(os.path.dirname(HERE), "provision", "project.yml")
PLACEHOLDER = re.compile(r"~~([a-z_]+)~~")
SITE = "~~site~~"
NO_YAML = "the host's python3 has no PyYAML: apt-get install python3-yaml (or pip install pyyaml)"

# The generated files' headers: constant text, never a value from the project.
ONE_HOST = """\
# The whole deployment on one host: FL server, one client per site, one MLflow server per site.
# Generated from provision/project.yml and stack/compose.template.yml by stack/topology.py (`make up`
# regenerates it when the sites change; a test checks that it matches): edit the project (or the
# template), not this file.
# Networks carry the privacy promise: `fl` joins the server, the clients and the admin; each
# site's private network joins only that site's client and its MLflow server, so the server
# and the other sites can neither resolve nor reach a site's MLflow. Both are internal (no route
# out of the host); only each MLflow server is also on its own `<site>-ui` network, the one Docker
# publishes its UI port through (README: "Trust and hardening").
# Knobs live in .env; `make up` is the way in.
"""
BUNDLE = """\
# One participant's part of the federation, on its own host (made by `make bundles` from the
# project's provision/project.yml and stack/compose.template.yml). {what}
# Knobs live in .env; `make up` is the way in (README.md).
"""
BUNDLE_WHAT = {
    "server": "Publishes the FL port (mTLS) on the host: the sites and the admin dial it.",
    "admin": "Submits and follows jobs; reaches the server at FL_SERVER_ADDRESS.",
    "site": "Its client dials the server at FL_SERVER_ADDRESS; its MLflow and its metrics stay here.",
}


class Merge:
    """A YAML merge key (`<<`), kept as a key: the output merges the same x- bases as the template."""

    def __repr__(self):
        return "<<"


MERGE = Merge()


def load_template(path: str = TEMPLATE) -> dict:
    """The template as data, its `<<: *base` merges kept (each base one object, wherever it is merged)."""
    import yaml

    class Loader(yaml.SafeLoader):
        def flatten_mapping(self, node):
            pass  # `<<` stays a key (below): the bases are not copied into each service

    Loader.add_constructor("tag:yaml.org,2002:merge", lambda loader, node: MERGE)
    with open(path) as f:
        return yaml.load(f, Loader=Loader)


def dump(doc: dict) -> str:
    """doc as YAML, with PyYAML's safe dumper: each x-<name> base anchored as &<name>, `<<` a merge key."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def serialize(self, node):
            self.names = {v: k.value[2:] for k, v in node.value if k.value.startswith("x-")}
            super().serialize(node)

        def generate_anchor(self, node):
            return self.names.get(node) or super().generate_anchor(node)

        def ignore_aliases(self, data):
            return data is MERGE or super().ignore_aliases(data)

        def increase_indent(self, flow=False, indentless=False):
            return super().increase_indent(flow, False)  # a list's items indented under their key

    Dumper.add_representer(Merge, lambda d, _: d.represent_scalar("tag:yaml.org,2002:merge", "<<"))
    Dumper.add_representer(type(None), lambda d, _: d.represent_scalar("tag:yaml.org,2002:null", ""))
    # On one line, [a, b] or {k: v}: a short list or mapping of plain values (by shape alone, not by the
    # values' length, so that every site's services look alike).
    Dumper.add_representer(dict, lambda d, m: d.represent_mapping(
        "tag:yaml.org,2002:map", m, len(m) <= 2 and plain([*m, *m.values()])))
    Dumper.add_representer(list, lambda d, s: d.represent_sequence("tag:yaml.org,2002:seq", s, len(s) <= 3 and plain(s)))
    return spaced(yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=1 << 20))


def plain(values: list) -> bool:
    return all(isinstance(x, (str, int, float)) for x in values)


def spaced(text: str) -> str:
    """A blank line before each top-level key and each service, for the reader. (At this width a scalar
    breaks only at its own newlines, onto lines indented deeper than a service's key.)"""
    out, section = [], None
    for line in text.splitlines():
        if not line.startswith(" "):
            section = line.split(":")[0]
            out.append("")
        elif section == "services" and re.match(r"  [^ ]", line) and out[-1] != "services:":
            out.append("")
        out.append(line)
    return "\n".join(out[1:]) + "\n"


def fill(node, values: dict, keep: dict):
    """A copy of node with each ~~name~~ filled from values; an object in keep (a filled x- base, by the id
    of its template object) is put in as it is, so that the output writes it once and merges it."""
    if id(node) in keep:
        return keep[id(node)]
    if isinstance(node, dict):
        return {fill(k, values, keep): fill(v, values, keep) for k, v in node.items()}
    if isinstance(node, list):
        return [fill(v, values, keep) for v in node]
    if isinstance(node, str):
        return PLACEHOLDER.sub(lambda m: values[m[1]], node)
    return node


def merge(into: dict, over: dict):
    """Merge the mapping over into into, key by key (an overlay of the template, before it is filled)."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


def role(project: Project, part: str):
    """None for the one-host file, else which bundle: server, admin or site."""
    if part is None:
        return None
    return {project.server["name"]: "server", project.admin["name"]: "admin"}.get(part, "site")


def placeholders(common: dict, project: Project, paths: dict, name: str = None, site: str = None) -> dict:
    """{placeholder: value} for one entry: the common ones, a participant's files, a site's settings."""
    values = {**common, "project_file": paths["project_file"]}
    if site:
        name = site
        values.update(site=site, port_var=port_var(site), ui_port=str(project.ports[site]),
                      tracking_uri=project.uris[site])
        values["secrets"] = fill(paths["secrets"], values, {})
    if name:
        values["kit"] = fill(paths["kit"], {**values, "name": name}, {})
    return values


def expand(section: dict, sites: list, entry_values, keep: dict) -> dict:
    """A template section's entries, filled: a ~~site~~ entry once per site (a site's entries together),
    the others once. entry_values(key, site) gives the placeholders' values, or None to leave it out."""
    out = {}
    for per_site, keys in itertools.groupby(section, key=lambda k: SITE in k):
        keys = list(keys)
        for site in sites if per_site else [None]:
            for key in keys:
                values = entry_values(key, site)
                if values is not None:
                    out[fill(key, values, {})] = fill(section[key], values, keep)
    return out


def used(services: dict) -> dict:
    """{section: names} of the networks, volumes and secrets the services use. (They are written in each
    service's own keys, never in an x- base.)"""
    names = {"networks": set(), "volumes": set(), "secrets": set()}
    for s in services.values():
        names["networks"].update(s.get("networks", []))
        names["secrets"].update(x["source"] if isinstance(x, dict) else x for x in s.get("secrets", []))
        names["volumes"].update(v.get("source") if isinstance(v, dict) else v.split(":")[0] for v in s.get("volumes", []))
    return names


def bases(services: dict) -> set:
    """The ids of the x- bases the services merge, directly or through another base."""
    found, todo = set(), [s.get(MERGE) for s in services.values()]
    while todo:
        base = todo.pop()
        if isinstance(base, dict) and id(base) not in found:
            found.add(id(base))
            todo.append(base.get(MERGE))
    return found


def compose_data(project: Project, part: str = None, gpus: str = "") -> dict:
    """The compose file as data: of the whole deployment on one host (part None), or of one participant's
    bundle; gpus is the GPUS knob, reserved for each site's client."""
    template, kind = load_template(), role(project, part)
    generator = template.pop("~~generator~~")
    where = generator["one-host" if kind is None else "bundle"]
    merge(template, where["compose"])
    want = gpu_request(gpus) if kind in (None, "site") else None
    if want is not None:
        merge(template, generator["gpus"])
    sites = project.sites if kind is None else ([part] if kind == "site" else [])
    common = {"nvflare": pins.pin("nvflare"), "mlflow": pins.pin("mlflow"), "project": project.name,
              "server": project.server["name"], "fl_port": str(project.fl_port)}
    keep = {}
    for key in [k for k in template if k.startswith("x-")]:  # a base comes before the bases merging it
        keep[id(template[key])] = fill(template[key], common, keep)
    participant = {"server": project.server["name"], "admin": project.admin["name"]}

    def service_values(key, site):
        if site is None and kind is not None and key in ("provision", "server", "admin") and key != kind:
            return None  # a bundle holds its own participant's services only
        return placeholders(common, project, where["paths"], participant.get(key), site)

    doc = {"services": expand(template["services"], sites, service_values, keep)}
    for name, service in doc["services"].items():
        if want is not None and name in project.sites:
            device = service["deploy"]["resources"]["reservations"]["devices"][0]
            device.update({"device_ids": want} if isinstance(want, list) else {"count": want})
    names = used(doc["services"])
    for section in ("networks", "volumes", "secrets"):
        entries = expand(template[section], sites,
                         lambda key, site: placeholders(common, project, where["paths"], site=site), {})
        doc[section] = {k: v for k, v in entries.items() if k in names[section]}
    found = bases(doc["services"])
    xs = {k: keep[id(template[k])] for k in template if k.startswith("x-") and id(keep[id(template[k])]) in found}
    return {**xs, **{k: v for k, v in doc.items() if v}}


def compose_text(project: Project, part: str = None, gpus: str = "") -> str:
    """The compose file's text: a constant header, then the data as PyYAML writes it."""
    header = ONE_HOST if part is None else BUNDLE.format(what=BUNDLE_WHAT[role(project, part)])
    return header + "\n" + dump(compose_data(project, part, gpus))


def main(argv: list) -> int:
    commands = ("compose", "check", "plan", "participants", "gpus", "ui-view")
    if not argv or argv[0] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    knob = os.environ.get("GPUS", "")
    try:
        if cmd == "ui-view":
            print(UI_VIEW)
        elif cmd == "gpus":  # needs no project (nor PyYAML): `make up` checks it before any build
            want = gpu_request(knob)
            if isinstance(want, list):
                want = f'"device={",".join(want)}"'  # docker's --gpus parses CSV: ids go in double quotes
            print(want or "")
        else:
            project = Project(args[0] if args else DEFAULT_PROJECT)
            if cmd in ("check", "plan"):
                print(" ".join(f"{site}={port}" for site, port in ui_ports(project, os.environ).items()))
            if cmd in ("compose", "plan"):
                sys.stdout.write(compose_text(project, gpus=knob))
            elif cmd == "participants":
                print("\n".join(project.participants()))
    except (ProjectError, pins.PinError) as e:
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
