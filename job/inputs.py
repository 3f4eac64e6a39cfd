"""Checks of job.py's input: each bad value is a UsageError whose one line names the fix."""

import json
import os
import urllib.error
import urllib.parse
from typing import Optional

# From the checkout's root, or the admin container's working folder (/opt/fedtrack, the project mounted there).
DEFAULT_PROJECT = os.path.join("provision", "project.yml")


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


def project_sites(project_file: str) -> dict:
    """{site: tracking URI} of every client in the project (read as the compose generator reads it)."""
    from fedtrack.project import Project, ProjectError

    try:
        project = Project(project_file)
    except ProjectError as e:
        raise UsageError(str(e))
    return dict(project.uris)


def check_tracking_uri(site: str, uri: str) -> str:
    parsed = urllib.parse.urlsplit(uri)
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if parsed.scheme not in ("http", "https") or not parsed.hostname or port == -1 or parsed.query or parsed.fragment:
        raise UsageError(
            f"site {site}: {uri!r} is not an http(s) tracking URI; use --site {site}=http://HOST:PORT "
            f"(the address of {site}'s own MLflow server)"
        )
    return uri.rstrip("/")


def parse_sites(specs: list, project: dict) -> dict:
    """['a=http://h:1', ...] -> {'a': 'http://h:1', ...}: the sites named, with these URIs; none named:
    every site of the project with its own tracking URI. A UsageError names the fix."""
    known = list(project)
    if not specs:
        return {site: check_tracking_uri(site, uri) for site, uri in project.items()}
    sites = {}
    for spec in specs:
        name, sep, uri = spec.partition("=")
        name = name.strip()
        if name not in known:
            raise UsageError(f"unknown site {name!r}; the project's sites are {', '.join(known)}")
        if name in sites:
            raise UsageError(f"site {name} is given twice; give each site once")
        if not sep or not uri.strip():
            raise UsageError(f"site {name} has no tracking URI; use --site {name}=http://HOST:PORT")
        sites[name] = check_tracking_uri(name, uri.strip())
    return sites


def probe_tracking_server(uri: str, timeout: float = 5.0) -> Optional[str]:
    """None if the MLflow server at `uri` answers its tracking API, else a short reason.

    Uses the REST path a client uses (not /health, which skips MLflow's host check).
    """
    from fedtrack.direct import DIRECT  # never through a proxy the environment names

    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with DIRECT.open(url, timeout=timeout) as resp:
            json.load(resp)
        return None
    except urllib.error.HTTPError as e:
        body = e.read(200).decode(errors="replace").strip()
        return f"HTTP {e.code} {body}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return str(getattr(e, "reason", e))


def check_admin_kit(kit: str, username: str = None) -> str:
    """The admin user name of a startup kit, or a UsageError saying what to fix."""
    if not kit:
        raise UsageError("--env prod needs --startup-kit DIR, the admin's startup kit (run `make provision`)")
    fed_admin = os.path.join(kit, "startup", "fed_admin.json")
    if not os.path.isdir(kit):
        raise UsageError(f"startup kit not found at {kit}; run `make provision`")
    if not os.path.isfile(fed_admin):
        raise UsageError(f"{kit} is not an admin startup kit (no startup/fed_admin.json); use the admin's kit")
    with open(fed_admin) as f:
        admin = json.load(f).get("admin", {})
    for key in ("client_cert", "client_key", "ca_cert"):
        path = os.path.join(kit, "startup", admin.get(key, f"<{key} missing>"))
        if not os.path.isfile(path):
            raise UsageError(f"admin startup kit {kit} lacks {os.path.basename(path)}; provision it again")
    kit_user = admin.get("username")
    if username and kit_user and username != kit_user:
        raise UsageError(f"startup kit {kit} belongs to {kit_user}, not {username}")
    return username or kit_user
