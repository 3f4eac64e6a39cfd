"""No name lookup from a container of the deployment reaches a resolver outside its own container (README
"Trust and hardening").

Docker 20.10's embedded resolver (127.0.0.11 in every container on a user-defined network) answers the names
of the containers on the asker's networks and forwards every other name, `internal` network or not
(CVE-2024-29018; Docker 23.0.11, 25.0.4 and 26.0 forward nothing for a container on internal networks only).
It forwards to the nameservers of the host's /etc/resolv.conf: dialled from the host's own network namespace
when they are on the host's loopback (127.0.0.x: a local dnsmasq, unbound, ...), else from the container's,
where an internal network still reaches every address of the host itself (the firewall drops only what the
host would forward). A service's `dns` setting replaces those nameservers, and Docker dials the ones it names
from the container's namespace: a loopback address there is the container's own, where nothing answers. The
compose file names 127.0.0.1 for every service on a network.

Checked without the shared stack: the compose file as Compose reads it, and a twin of its networks (each with
its `internal` setting) and networked services (each stand-in with the service's image, `dns`, `dns_opt` and
`dns_search`, on its networks under its service name). From every stand-in an outside name is looked up, over
UDP and TCP, while recorders listen on the host (at the loopback addresses the compose file names, and at each
twin network's gateway, an address of the host that every container on that network reaches) and in the
stand-in's own namespace. The host's recorder must hear nothing, the stand-in's own must hear the lookup, and
every service the compose file puts on a network with it must still resolve by name. A control shows the
host's recorder hearing Docker forward a lookup from an internal network whose container's resolver is one the
host answers at. Nothing is sent to an address outside the host: a stand-in looks up only once its resolvers
are known to be its own loopback (a service without that setting fails before any lookup: its resolvers would
be the host's real ones, which a test cannot stand in for)."""

import ipaddress
import json
import os
import secrets
import subprocess
import time

import pytest
import yaml

from fedtrack.project import Project
from stack.topology import compose_text
from support import PROJECT, ROOT, wait_until

pytestmark = pytest.mark.docker

HELPER = os.path.join(ROOT, "tests", "dnsrecorder.py")
TOKEN = f"dnsprobe-{os.getpid()}-{secrets.token_hex(3)}"


def docker(*args, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def dns_of(service: dict) -> list:
    """The service's `dns` addresses (Compose takes one or a list)."""
    dns = service.get("dns") or []
    return [dns] if isinstance(dns, str) else list(dns)


def resolvers_stay_home(service: dict) -> str:
    """'' when the service's lookups can go nowhere but its own container's loopback, else why not."""
    dns = dns_of(service)
    if not dns:
        return ("it sets no `dns`: Docker's resolver forwards its lookups to the host's resolvers, from the host "
                "itself when they are on loopback (CVE-2024-29018)")
    outside = [a for a in dns if not ipaddress.ip_address(a).is_loopback]
    if outside:
        return f"its `dns` names {outside}, which its container can reach outside itself"
    return ""


def on_networks(services: dict) -> dict:
    return {name: s for name, s in services.items() if s.get("networks")}


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> dict:
    """The one-host compose file, every profile, as Compose reads it (`docker compose config`)."""
    folder = tmp_path_factory.mktemp("dns-compose")
    path = folder / "docker-compose.yml"
    path.write_text(compose_text(Project(PROJECT)))
    result = subprocess.run(["docker", "compose", "-f", str(path), "--project-directory", str(folder), "-p", TOKEN,
                             "--profile", "admin", "--profile", "tools", "config", "--format", "json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_service_on_a_network_sends_its_lookups_to_its_own_loopback():
    """The one-host file and every participant's bundle (where the FL network is routed): each service with a network
    names only loopback resolvers, i.e. its own container's (the one-shot provision has no network)."""
    project = Project(PROJECT)
    files = {"docker-compose.yml": compose_text(project),
             **{f"bundle {p}": compose_text(project, p) for p in project.participants()}}
    wrong = []
    for file, text in files.items():
        services = on_networks(yaml.safe_load(text)["services"])
        assert services, file
        wrong += [f"{file}: {name}: {why}" for name, s in services.items() if (why := resolvers_stay_home(s))]
    assert not wrong, "\n".join(wrong)


class Twin:
    """The compose file's networks and networked services, as throwaway containers of this host's engine."""

    def __init__(self, config: dict):
        self.config = config
        self.services = on_networks(config["services"])
        self.networks = {n: f"{TOKEN}-{n}" for s in self.services.values() for n in s["networks"]}
        self.gateways, self.addresses, self.recorder = {}, {}, None

    # ------------------------------------------------------------------ set up and tear down

    def build(self):
        for net, name in self.networks.items():
            internal = bool(self.config["networks"].get(net, {}).get("internal"))
            docker("network", "create", "--label", f"dnsprobe={TOKEN}", *(["--internal"] if internal else []), name)
            ipam = json.loads(docker("network", "inspect", name).stdout)[0]["IPAM"]
            self.gateways[net] = ipam["Config"][0]["Gateway"]
        # The host's recorder: the host's own network namespace, every loopback address a service names, each
        # network's gateway. Docker's root binds port 53 for it, whoever runs the tests.
        loopbacks = sorted({a for s in self.services.values() for a in dns_of(s)
                            if ipaddress.ip_address(a).is_loopback})
        self.recorder = self.container("recorder", "--network", "host", image=self.image(next(iter(self.services))),
                                       args=["serve", *loopbacks, *sorted(set(self.gateways.values()))])
        for service, s in self.services.items():
            self.stand_in(service, s)
        wait_until(lambda: all("ready" in self.log(c) or "cannot bind" in self.log(c)
                               for c in [self.recorder, *(self.name(s) for s in self.services)]), 60, "the recorders")
        for c in [self.recorder, *(self.name(s) for s in self.services)]:
            if "cannot bind" in self.log(c):
                if c == self.recorder:
                    pytest.skip(f"the host's recorder could not listen: {self.log(c).strip()} (a resolver of this host "
                                "holds the address)")
                raise AssertionError(f"{c}: {self.log(c)}")
        for service in self.services:
            self.addresses[service] = {net: info["IPAddress"] for net, info in json.loads(
                docker("inspect", self.name(service)).stdout)[0]["NetworkSettings"]["Networks"].items()}

    def remove(self):
        ids = docker("ps", "-aq", "--filter", f"label=dnsprobe={TOKEN}", check=False).stdout.split()
        if ids:
            docker("rm", "-f", "-v", *ids, check=False)
        nets = docker("network", "ls", "-q", "--filter", f"label=dnsprobe={TOKEN}", check=False).stdout.split()
        if nets:
            docker("network", "rm", *nets, check=False)

    # ------------------------------------------------------------------ containers

    def image(self, service: str) -> str:
        return self.config["services"][service]["image"]

    def name(self, service: str) -> str:
        return f"{TOKEN}-{service}"

    def container(self, what: str, *options, image: str, args: list, networks: list = (), alias: str = None) -> str:
        """Start the helper in a container (root: it binds port 53 in its namespace), on `networks` (twin names),
        under `alias` on each of them."""
        name = f"{TOKEN}-{what}"
        first, *rest = networks or [None]
        docker("create", "--name", name, "--label", f"dnsprobe={TOKEN}", "--user", "0", "--entrypoint", "python3",
               "-v", f"{HELPER}:/probe/dnsrecorder.py:ro", *options,
               *(["--network", first] if first else []), *(["--network-alias", alias] if first and alias else []),
               image, "/probe/dnsrecorder.py", *args)
        for net in rest:
            docker("network", "connect", *(["--alias", alias] if alias else []), net, name)
        docker("start", name)
        return name

    def stand_in(self, service: str, s: dict):
        """The service's twin: its image, its networks and resolver settings, its name; a recorder in its own
        namespace at each loopback resolver it names."""
        options = [*(o for a in dns_of(s) for o in ("--dns", a)),
                   *(o for a in s.get("dns_opt") or [] for o in ("--dns-option", a)),
                   *(o for a in s.get("dns_search") or [] for o in ("--dns-search", a))]
        own = [a for a in dns_of(s) if ipaddress.ip_address(a).is_loopback]
        self.container(service, *options, image=self.image(service), args=["serve", *own],
                       networks=[self.networks[n] for n in s["networks"]], alias=service)

    def log(self, container: str) -> str:
        return docker("logs", container, check=False).stdout

    def seen(self, container: str) -> list:
        """What the helper in `container` recorded, as [protocol, name]."""
        return [[p[1], p[3]] for p in (line.split() for line in self.log(container).splitlines()) if p[:1] == ["query"]]

    def lookup(self, container: str, outside: str, names: list) -> dict:
        out = docker("exec", container, "python3", "/probe/dnsrecorder.py", "lookup", outside, *names,
                     timeout=90).stdout
        return json.loads(out.strip().splitlines()[-1])

    def neighbours(self, service: str) -> dict:
        """Every service sharing a network with this one (itself too), and the addresses its name may resolve to
        from here: its stand-in's on the networks they share."""
        mine = set(self.services[service]["networks"])
        return {other: {self.addresses[other][self.networks[n]] for n in mine & set(s["networks"])}
                for other, s in self.services.items() if mine & set(s["networks"])}


@pytest.fixture(scope="module")
def twin(compose):
    for image in {s["image"] for s in on_networks(compose["services"]).values()}:
        if docker("image", "inspect", image, check=False).returncode != 0:
            subprocess.run(["make", "--no-print-directory", "images"], cwd=ROOT, check=True, timeout=3600)
    t = Twin(compose)
    try:
        t.build()
        yield t
    finally:
        t.remove()


def resolved(names: dict, expected: dict) -> list:
    """The names that did not resolve to one of their expected addresses."""
    return [f"{n} -> {got} (expected one of {sorted(expected[n])})" for n, got in names.items()
            if not isinstance(got, list) or not got or not set(got) <= expected[n]]


SERVICES = sorted(on_networks(yaml.safe_load(compose_text(Project(PROJECT)))["services"]))


@pytest.mark.parametrize("service", SERVICES)
def test_a_lookup_from_a_service_stays_in_its_container_and_its_neighbours_resolve(twin, service):
    """An outside name looked up from the service's stand-in reaches its own loopback and no recorder on the host;
    every service on a network with it resolves by name."""
    why = resolvers_stay_home(twin.services[service])
    assert not why, f"{service}: {why}; not looked up here, as its resolvers would be the host's"
    outside = f"leak-probe-{TOKEN}-{service}.example"
    before = time.monotonic()
    result = twin.lookup(twin.name(service), outside, sorted(twin.neighbours(service)))
    took = time.monotonic() - before
    assert isinstance(result["outside"], str), f"{outside} resolved from {service}: {result}"
    assert not any(outside in name for _, name in twin.seen(twin.recorder)), \
        f"the host's recorder heard {service}'s lookup: {twin.seen(twin.recorder)}"
    own = twin.seen(twin.name(service))
    assert ["udp", outside] in own and ["tcp", f"tcp-{outside}"] in own, \
        f"{service}'s lookup did not reach its own loopback (seen there: {own}; result: {result})"
    assert not resolved(result["names"], twin.neighbours(service)), \
        f"{service}: {resolved(result['names'], twin.neighbours(service))}\n{result['resolv_conf']}"
    print(f"{service}: {outside} refused in its own container, {len(result['names'])} neighbours resolved "
          f"({took:.1f} s)")


def test_control_docker_forwards_a_lookup_from_an_internal_network_to_a_resolver_the_host_answers_at(twin):
    """The control: a container on a site's client's networks (both internal), its resolver an address of the host
    (its first network's gateway, where the host's recorder listens). Docker forwards its outside lookup there, as it
    forwards to the host's own resolvers for a service that sets no `dns`, and the recorder reports it; the
    services still resolve."""
    site = next(s for s, c in twin.services.items() if len(c["networks"]) > 1
                and all(twin.config["networks"][n].get("internal") for n in c["networks"]))
    nets = list(twin.services[site]["networks"])
    gateway = twin.gateways[nets[0]]
    name = twin.container(f"control-{site}", "--dns", gateway, image=twin.image(site), args=["serve"],
                          networks=[twin.networks[n] for n in nets])
    wait_until(lambda: "ready" in twin.log(name), 30, "the control container")
    outside = f"leak-probe-{TOKEN}-control.example"
    result = twin.lookup(name, outside, sorted(set(twin.neighbours(site)) - {site}))
    heard = twin.seen(twin.recorder)
    assert ["udp", outside] in heard and ["tcp", f"tcp-{outside}"] in heard, \
        f"the host's recorder at {gateway} heard nothing from an internal network: {heard}; {result}"
    assert isinstance(result["outside"], str), result  # REFUSED by the recorder
    assert not resolved(result["names"], twin.neighbours(site)), result
