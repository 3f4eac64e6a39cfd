"""Healthchecks of the FLARE services (installed in the image as `fedtrack-health`). None reads a log.

    fedtrack-health server   the FL port completes an mTLS handshake (the kit's root CA and server
                             name) and answers HTTP on it: what every client and admin connects to
    fedtrack-health client   the client holds an established connection to the server's FL port
                             now, its tracking spool's volume accepts a write now, no job's spool
                             write failed in the last 30 s, and the site's forwarder runs

Exit 0 when healthy; otherwise 1 and one line saying what is wrong.
"""

import json
import os
import socket
import ssl
import sys
import time

from fedtrack.names import spool_dir
from fedtrack.spool.failures import FailureLog
from fedtrack.spool.forwarder import forwarder_pid

KIT = os.environ.get("KIT", "/kit")
SPOOL = spool_dir()
TCP_ESTABLISHED = "01"
RECENT = 30  # seconds: a spool write that failed this recently makes the client unhealthy


def server() -> str:
    with open(os.path.join(KIT, "startup", "fed_server.json")) as f:
        conf = json.load(f)["servers"][0]
    name, port = conf["service"]["target"].rsplit(":", 1)
    startup = os.path.join(KIT, "startup")
    ctx = ssl.create_default_context(cafile=os.path.join(startup, conf["ssl_root_cert"]))
    # Its own certificate (signed by the same root) as the client's: the listener demands one.
    ctx.load_cert_chain(os.path.join(startup, conf["ssl_cert"]), os.path.join(startup, conf["ssl_private_key"]))
    try:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=4) as raw:
            with ctx.wrap_socket(raw, server_hostname=name) as tls:
                tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
                answer = tls.recv(64)
    except (OSError, ssl.SSLError) as e:
        return f"the FL port {port} does not accept an mTLS connection: {e}"
    if not answer.startswith(b"HTTP/1."):
        return f"the FL port {port} completed the handshake but answered {answer[:20]!r}"
    return ""


def _established_to(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == TCP_ESTABLISHED:
                return True
    return False


def client() -> str:
    with open(os.path.join(KIT, "startup", "fed_client.json")) as f:
        target = json.load(f)["servers"][0]["service"]["target"]
    if not _established_to(int(target.rsplit(":", 1)[1])):
        return f"not connected to the FL server {target}"
    probe = os.path.join(SPOOL, ".health-probe")
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return f"the tracking spool {SPOOL} does not accept writes ({e.strerror}): records are being lost"
    finally:
        try:
            os.remove(probe)
        except OSError:
            pass
    recent = [f for f in FailureLog.read(SPOOL) if f.get("failing") and time.time() - f.get("at", 0) < RECENT]
    if recent:
        return f"the job's spool writes are failing ({recent[0].get('error') or 'storage error'}): records are being lost"
    if forwarder_pid(SPOOL) is None:
        return f"no forwarder delivers {SPOOL}"
    return ""


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in (["server"], ["client"]):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    problem = server() if argv == ["server"] else client()
    if problem:
        print(f"unhealthy: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
