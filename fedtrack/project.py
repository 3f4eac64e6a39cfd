"""provision/project.yml, read once and checked field by field: the federation's participants, as the
compose generator (stack/topology.py, on the host) and the job CLI (in the FLARE image) use them.

Every value the deployment uses is checked against its YAML type and a strict pattern before anything
uses it; a bad one is a ProjectError whose one line names the field and what to give. Stdlib and PyYAML.
"""

import re

# A site's name names its containers, networks, volumes and secrets.
SITE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
PROJECT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# The server's name is the host name the clients dial (and its certificate's): DNS labels.
SERVER_NAME = re.compile(r"(?=.{1,63}\Z)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
ADMIN_NAME = re.compile(r"(?=.{3,254}\Z)[A-Za-z0-9._-]+@[A-Za-z0-9.-]+")
ORG = re.compile(r"[A-Za-z0-9_-]{1,63}")
TYPE = re.compile(r"server|client|admin")
ROLE = re.compile(r"project_admin|org_admin|lead|member")
# A tracking URI is a scheme, a host and a port: nothing else (no user, path, query, fragment, space).
TRACKING_URI = re.compile(r"(?P<scheme>https?)://(?P<host>[A-Za-z0-9.-]{1,253})(:(?P<port>[0-9]{1,5}))?/?")
HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
GPU_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")  # an index or a UUID, as `nvidia-smi -L` lists them
# A site's UI link opens MLflow 3's "Model training" view (its GenAI view otherwise): the links `make up`
# and `make wait` print (`python3 -m stack.topology ui-view`) and a site bundle's README.
UI_VIEW = "/#/experiments?workflowType=machine_learning"
DEFAULT_FL_PORT = 8002
# Which fields a participant type may set besides name, type and org.
OWN_FIELDS = {"server": ("fed_learn_port",), "client": ("mlflow_port", "tracking_uri"), "admin": ("role",)}


class ProjectError(Exception):
    """Bad project.yml (or knob): printed as one line that says what to fix."""


def default_ui_port(place: int) -> int:
    """Site N's MLflow UI port on the host unless its mlflow_port says otherwise: 5000 + N (N from 1)."""
    return 5000 + place


def default_tracking_uri(site: str) -> str:
    """A site's own MLflow service on its private network (compose: mlflow-<site>, MLflow's port)."""
    return f"http://mlflow-{site}:5000"


def show(value) -> str:
    """A value as an error line shows it: its repr (newlines escaped), cut to ~60 characters, its type if not text."""
    text = repr(value)
    if len(text) > 60:
        text = f"{text[:48]}... ({len(text)} characters)"
    kinds = {bool: "true/false", dict: "a mapping", list: "a list", type(None): "empty"}
    return text if isinstance(value, (str, int)) and not isinstance(value, bool) else \
        f"{text} ({kinds.get(type(value), 'a ' + type(value).__name__)})"


def plain(value: str) -> str:
    """A knob's value in an error: as given when it is short printable ASCII, else shown."""
    return value if re.fullmatch(r"[!-~]{0,40}", value) else show(value)


def text(value, pattern: re.Pattern, field: str, hint: str) -> str:
    """value, if it is a string that matches pattern in full; else the field's one-line error."""
    if isinstance(value, str) and pattern.fullmatch(value):
        return value
    if value is None:
        raise ProjectError(f"{field} is missing: {hint}")
    raise ProjectError(f"{field} {show(value)}: {hint}")


def port(value, field: str) -> int:
    """value, if it is a port number (an int, not a bool)."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    raise ProjectError(f"{field} {show(value)}: give a port from 1 to 65535")


def tracking_uri(value, field: str) -> str:
    """value without its trailing '/', if it is http(s)://HOST[:PORT][/] and nothing else."""
    m = TRACKING_URI.fullmatch(value) if isinstance(value, str) else None
    if not m or not HOST.fullmatch(m["host"]) or (m["port"] and not 1 <= int(m["port"]) <= 65535):
        raise ProjectError(f"{field} {show(value)}: give http(s)://HOST:PORT, the site's own MLflow server "
                           f"(a host name or IPv4 address and a port; no user, path, query or spaces)")
    return value.rstrip("/")


def read(path: str) -> dict:
    import yaml

    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise ProjectError(f"cannot read {path}: {e.strerror}")
    except yaml.YAMLError as e:  # where, and the parser's problem: one line
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ProjectError(f"{path} is not valid YAML{where}: {show(getattr(e, 'problem', None) or str(e).splitlines()[0])}")
    if not isinstance(doc, dict) or not isinstance(doc.get("participants"), list) or not doc["participants"]:
        raise ProjectError(f"{path} has no participants list")
    return doc


def participant(path: str, n: int, p) -> dict:
    """The n-th participant, checked: {name, type, org} and the fields of its type that it sets."""
    if not isinstance(p, dict):
        raise ProjectError(f"{path}: participant {n} {show(p)}: give a mapping with name, type and org")
    kind = text(p.get("type"), TYPE, f"{path}: participant {n}: type", "give server, client or admin")
    name = p.get("name")
    if kind == "server":
        text(name, SERVER_NAME, f"{path}: server name", "use lowercase letters, digits, '-' and '.' (the host name "
             "the clients dial; at most 63)")
    elif kind == "client":
        text(name, SITE_NAME, f"{path}: site name", "use lowercase letters, digits and '-' (it names the site's "
             "containers, networks and volumes; at most 40)")
    else:
        text(name, ADMIN_NAME, f"{path}: admin name", "give an email-like name, e.g. admin@example.org")
    who = f"{path}: {'site' if kind == 'client' else kind} {name}"
    checked = {"name": name, "type": kind,
               "org": text(p.get("org"), ORG, f"{who}: org", "use letters, digits, '-' and '_' (at most 63)")}
    for field, kinds in (("fed_learn_port", "the server"), ("mlflow_port", "a site"), ("tracking_uri", "a site"),
                         ("role", "the admin")):
        if field in p and field not in OWN_FIELDS[kind]:
            raise ProjectError(f"{who}: {field} {show(p[field])}: only {kinds} has a {field}; remove it here")
    if kind == "server":
        checked["fed_learn_port"] = port(p.get("fed_learn_port", DEFAULT_FL_PORT), f"{who}: fed_learn_port")
    elif kind == "admin":
        checked["role"] = text(p.get("role"), ROLE, f"{who}: role", "give lead (submits and manages its own "
                               "jobs), member, org_admin or project_admin")
    else:
        if "mlflow_port" in p:
            checked["mlflow_port"] = port(p["mlflow_port"], f"{who}: mlflow_port")
        if "tracking_uri" in p:
            checked["tracking_uri"] = tracking_uri(p["tracking_uri"], f"{who}: tracking_uri")
    return checked


class Project:
    """The checked project: name; server and admin ({name, type, org, ...}); clients and sites (their names,
    in order); fl_port; ports ({site: MLflow UI port}); uris ({site: tracking URI})."""

    def __init__(self, path: str):
        self.path = path
        doc = read(path)
        self.name = text(doc.get("name"), PROJECT_NAME, f"{path}: name",
                         "use lowercase letters, digits, '-' and '_' (at most 63)")
        parts = [participant(path, n, p) for n, p in enumerate(doc["participants"], start=1)]
        self._unique(parts)
        servers = [p for p in parts if p["type"] == "server"]
        admins = [p for p in parts if p["type"] == "admin"]
        self.clients = [p for p in parts if p["type"] == "client"]
        if len(servers) != 1:
            raise ProjectError(f"{path}: give exactly one participant of type server (found {len(servers)})")
        if not self.clients:
            raise ProjectError(f"{path}: give at least one participant of type client (a site)")
        if not admins:
            raise ProjectError(f"{path}: give a participant of type admin (it submits the jobs)")
        self.server, self.admin = servers[0], admins[0]
        self.fl_port = self.server["fed_learn_port"]
        self.sites = [p["name"] for p in self.clients]
        self.ports, self.uris = {}, {}
        for n, p in enumerate(self.clients, start=1):
            site, port_ = p["name"], p.get("mlflow_port", default_ui_port(n))
            other = [s for s, q in self.ports.items() if q == port_]
            if other:
                raise ProjectError(f"{path}: site {site}: mlflow_port {port_} is {other[0]}'s too; give each site its own")
            self.ports[site] = port_
            self.uris[site] = p.get("tracking_uri", default_tracking_uri(site))

    def _unique(self, parts: list):
        seen = set()
        for p in parts:
            if p["name"] in seen:
                if p["type"] == "client":
                    raise ProjectError(f"{self.path}: site {p['name']} is listed twice; list each site once")
                raise ProjectError(f"{self.path}: participant {p['name']} is listed twice; give each its own name")
            seen.add(p["name"])

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
        if not re.fullmatch(r"[0-9]{1,5}", value) or not 1 <= int(value) <= 65535:
            raise ProjectError(f"{var}={plain(value)}: give a port from 1 to 65535")
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
    if re.fullmatch(r"[1-9][0-9]{0,3}", value):
        return int(value)
    ids = value[len("device="):].split(",") if value.startswith("device=") else []
    if not ids or not all(GPU_ID.fullmatch(i) for i in ids):
        raise ProjectError(f"GPUS={plain(value)}: give all, a number of GPUs (1 or more) or device=ID[,ID...] "
                           f"(e.g. device=0,1); leave it empty for none")
    return ids
