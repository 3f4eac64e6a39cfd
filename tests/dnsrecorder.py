"""DNS probes for tests/integration/test_dns.py, standard library only, so that the same file runs on the host
and, mounted, in the project's images (any Python 3.8+).

    python3 dnsrecorder.py serve ADDR...     record every query that reaches ADDR:53 (UDP and TCP, each address),
                                             answer each REFUSED (nothing resolves, no one else is asked); prints
                                             `recording ADDR` once bound, then `query PROTO ADDR NAME` per query
    python3 dnsrecorder.py lookup OUTSIDE [NAME...]
                                             from this container: OUTSIDE looked up by the C library (getaddrinfo,
                                             UDP) and, as `tcp-OUTSIDE`, over TCP to the first nameserver in
                                             /etc/resolv.conf; each NAME by getaddrinfo; prints the results as JSON
"""

import json
import socket
import struct
import sys
import threading

REFUSED = 5


def question_name(msg: bytes) -> str:
    """The first question's name of a DNS message, dotted, lower case ('' when there is none)."""
    if len(msg) < 12 or struct.unpack("!H", msg[4:6])[0] == 0:
        return ""
    labels, i = [], 12
    while i < len(msg) and msg[i] != 0 and not msg[i] & 0xC0:
        labels.append(msg[i + 1:i + 1 + msg[i]].decode("ascii", "replace"))
        i += 1 + msg[i]
    return ".".join(labels).lower()


def refusal(msg: bytes) -> bytes:
    """The answer to a query: its id and question, QR and RA set, RD copied, RCODE REFUSED."""
    if len(msg) < 12:
        return b""
    flags = struct.unpack("!H", msg[2:4])[0]
    end = 12
    if struct.unpack("!H", msg[4:6])[0]:
        while end < len(msg) and msg[end] != 0:
            end += 1 + msg[end]
        end += 5  # the root label, QTYPE and QCLASS
    return (msg[:2] + struct.pack("!HHHHH", 0x8000 | (flags & 0x7900) | 0x0080 | REFUSED, 1 if end > 12 else 0, 0, 0, 0)
            + msg[12:end])


def query(name: str, qid: int = 0x5EED) -> bytes:
    """A recursive query for name's A record."""
    labels = b"".join(bytes([len(p)]) + p.encode("ascii") for p in name.strip(".").split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", 1, 1)


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


class Recorder:
    """Listens on (host, port) over UDP and TCP from start() to stop(); `seen()` is every query as (proto, name),
    in order of arrival (a name can come more than once: resolvers retry, and ask for A and AAAA)."""

    def __init__(self, host: str, port: int = 53, echo: bool = False):
        self.host, self.port, self.echo = host, port, echo
        self._seen, self._lock, self._stop, self._threads = [], threading.Lock(), threading.Event(), []

    def start(self) -> "Recorder":
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for s in (self._udp, self._tcp):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.host, self.port))
            s.settimeout(0.2)
        self._tcp.listen(16)
        for target in (self._serve_udp, self._serve_tcp):
            t = threading.Thread(target=target, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self._udp.close()
        self._tcp.close()

    def __enter__(self) -> "Recorder":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def seen(self) -> list:
        with self._lock:
            return list(self._seen)

    def _note(self, proto: str, msg: bytes) -> None:
        name = question_name(msg)
        with self._lock:
            self._seen.append((proto, name))
        if self.echo:
            print(f"query {proto} {self.host} {name}", flush=True)

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                msg, peer = self._udp.recvfrom(4096)
            except OSError:  # a timeout, or closed
                continue
            self._note("udp", msg)
            try:
                self._udp.sendto(refusal(msg), peer)
            except OSError:
                pass

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._tcp.accept()
            except OSError:
                continue
            threading.Thread(target=self._one_tcp, args=(conn,), daemon=True).start()

    def _one_tcp(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                while True:
                    head = _read(conn, 2)
                    if not head:
                        return
                    msg = _read(conn, struct.unpack("!H", head)[0])
                    self._note("tcp", msg)
                    answer = refusal(msg)
                    conn.sendall(struct.pack("!H", len(answer)) + answer)
            except OSError:
                return


def serve(addresses: list) -> int:
    recorders = []
    for addr in addresses:
        try:
            recorders.append(Recorder(addr, echo=True).start())
        except OSError as e:
            print(f"cannot bind {addr}:53: {e.strerror}", flush=True)
            return 1
        print(f"recording {addr}", flush=True)
    print("ready", flush=True)
    threading.Event().wait()
    return 0


def _getaddrinfo(name: str):
    try:
        return sorted({a[4][0] for a in socket.getaddrinfo(name, None, socket.AF_INET)})
    except socket.gaierror as e:
        return f"error: {e.strerror}"


def _tcp_query(name: str):
    with open("/etc/resolv.conf") as f:
        servers = [line.split()[1] for line in f if line.startswith("nameserver")]
    if not servers:
        return "error: no nameserver in /etc/resolv.conf"
    try:
        with socket.create_connection((servers[0], 53), timeout=15) as s:
            msg = query(name)
            s.sendall(struct.pack("!H", len(msg)) + msg)
            head = _read(s, 2)
            answer = _read(s, struct.unpack("!H", head)[0]) if head else b""
    except OSError as e:
        return f"error: {e}"
    if len(answer) < 12:
        return "error: no answer"
    return {"rcode": answer[3] & 15, "answers": struct.unpack("!H", answer[6:8])[0]}


def lookup(outside: str, names: list) -> int:
    result = {"outside": _getaddrinfo(outside), "outside_tcp": _tcp_query(f"tcp-{outside}"),
              "names": {n: _getaddrinfo(n) for n in names}, "resolv_conf": open("/etc/resolv.conf").read()}
    print(json.dumps(result), flush=True)
    return 0


def main(argv: list) -> int:
    if len(argv) >= 1 and argv[0] == "serve":
        return serve(argv[1:])
    if len(argv) >= 2 and argv[0] == "lookup":
        return lookup(argv[1], argv[2:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
