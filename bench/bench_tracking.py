"""Benchmark of site-local metric delivery: prints figures, asserts nothing.

    .venv/bin/python -m bench.bench_tracking [--quick]     (from the checkout's root)

1. Per-call cost of one metric log at the receiver (what the training thread pays): nvflare's
   stock MLflowReceiver vs this project's spooling receiver, with the tracking server up and down.
2. Delivery latency, log call -> visible through the server's REST API (p50 / p95).
3. Sustained delivery throughput, points per second for one site, against raw `log_batch` calls
   (1000-point batches) into the same server.
4. A digits training step (the job's model, data and optimizer, one thread) that logs its loss through
   the receiver, with the forwarder delivering, against the same step logging to a no-op receiver.
5. The job's round time (simulator, 2 sites) with both servers up, and with the first site's server down
   for the whole job.
Each part starts its own MLflow server(s) on free loopback ports and removes them afterwards.
"""

import argparse
import os
import statistics
import tempfile
import time

from fedtrack.project import Project
from stack.local import ROOT, MLflowServer, free_port, run_job
from stack.mlflow_rest import MLflowREST

SITE, OTHER = Project(os.path.join(ROOT, "provision", "project.yml")).sites[:2]  # the job's first two sites


def metric_shareable(step: int, value: float = None):
    from nvflare.apis.analytix import AnalyticsDataType, LogWriterName
    from nvflare.apis.utils.analytix_utils import create_analytic_dxo

    return create_analytic_dxo("train_loss", 0.5 + step * 1e-6 if value is None else value, AnalyticsDataType.METRIC,
                               writer=LogWriterName.MLFLOW, global_step=step).to_shareable()


def per_call(receiver, n: int, interval: float = 0.005) -> list:
    """Time n log calls spaced `interval` apart (so the stock receiver's 1 s flushes happen too)."""
    shareables = [metric_shareable(i) for i in range(n)]
    out = []
    for s in shareables:
        t0 = time.perf_counter()
        try:
            receiver.save(None, s, SITE)
        except Exception:  # noqa: BLE001 - nvflare catches a failed save and logs it; the time counts
            pass
        out.append(time.perf_counter() - t0)
        time.sleep(interval)
    return out


def stock_receiver(uri: str, up: bool):
    """nvflare's MLflowReceiver, set up as its initialize() would (a run exists when the server is up)."""
    from mlflow.tracking import MlflowClient
    from nvflare.app_opt.tracking.mlflow.mlflow_receiver import MLflowReceiver

    r = MLflowReceiver(tracking_uri=uri, buffer_flush_time=1)
    client = MlflowClient(tracking_uri=uri)
    r.mlflow_clients[SITE] = client
    r.run_ids[SITE] = client.create_run(client.create_experiment(f"bench-stock-{time.time()}")).info.run_id if up else "none"
    r._init_buffer([SITE])
    return r


class SpoolingReceiver:
    """The project's receiver, set up as initialize() would, without an FL context."""

    def __init__(self, uri: str, spool_dir: str, name: str):
        from fedtrack.site.receiver import SiteMLflowReceiver
        from fedtrack.spool.forwarder import start_forwarder
        from fedtrack.spool.writer import SpoolWriter

        self.r = SiteMLflowReceiver(SITE, uri, name)
        self.r.spool_dir = spool_dir
        self.r.writer = SpoolWriter(spool_dir, name, {
            "tracking_uri": uri, "experiment_name": name, "site": SITE, "job_id": name, "run_name": name,
            "created_ms": int(time.time() * 1000)})
        start_forwarder(spool_dir)
        self.r._last_check = time.monotonic()

    def save(self, fl_ctx, shareable, origin):
        self.r.save(fl_ctx, shareable, origin)


def fmt_us(xs) -> str:
    xs = sorted(xs)
    return f"median {statistics.median(xs) * 1e6:9.1f} us, p99 {xs[int(len(xs) * 0.99) - 1] * 1e6:11.1f} us, max {xs[-1] * 1e3:9.1f} ms"


def bench_per_call(server, tmp: str, n: int):
    print("1. per-call cost of one metric log at the receiver")
    down = f"http://127.0.0.1:{free_port()}"
    print(f"   stock MLflowReceiver, server up:   {fmt_us(per_call(stock_receiver(server.uri, True), n))}")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # else each flush blocks ~4 minutes in retries
    print(f"   stock MLflowReceiver, server down: {fmt_us(per_call(stock_receiver(down, False), n))}"
          "  (with HTTP retries off; with MLflow's default retries each flush blocks ~247 s)")
    del os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    print(f"   spooling receiver,     server up:   {fmt_us(per_call(SpoolingReceiver(server.uri, tmp + '/up', 'bench-up'), n))}")
    print(f"   spooling receiver,     server down: {fmt_us(per_call(SpoolingReceiver(down, tmp + '/down', 'bench-down'), n))}")


def bench_latency(server, tmp: str, n: int):
    from fedtrack.spool.forwarder import start_forwarder
    from fedtrack.spool.writer import SpoolWriter

    name = f"bench-latency-{os.getpid()}"
    w = SpoolWriter(tmp + "/lat", name, {"tracking_uri": server.uri, "experiment_name": name, "site": SITE,
                                          "job_id": name, "run_name": name, "created_ms": int(time.time() * 1000)})
    start_forwarder(tmp + "/lat")
    rest = MLflowREST(server.uri)
    w.append("metric", "warmup", 0.0, 0)
    while not (rest.experiment_by_name(name) and rest.runs([rest.experiment_by_name(name)["experiment_id"]])):
        time.sleep(0.05)
    run_id = rest.runs([rest.experiment_by_name(name)["experiment_id"]])[0]["info"]["run_id"]
    lat = []
    for i in range(n):
        t0 = time.monotonic()
        w.append("metric", "latency", float(i), i)
        while len(rest.history(run_id, "latency")) <= i:
            time.sleep(0.01)
        lat.append(time.monotonic() - t0)
        time.sleep(0.05)
    lat.sort()
    print(f"2. delivery latency, log call -> visible in the REST API ({n} points, one at a time): "
          f"p50 {statistics.median(lat) * 1e3:.0f} ms, p95 {lat[int(n * 0.95) - 1] * 1e3:.0f} ms, max {lat[-1] * 1e3:.0f} ms")
    w.close()


def bench_throughput(server, tmp: str, n: int):
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from fedtrack.spool.forwarder import start_forwarder
    from fedtrack.spool.writer import SpoolWriter

    client = MlflowClient(tracking_uri=server.uri)
    run_id = client.create_run(client.create_experiment(f"bench-raw-{os.getpid()}")).info.run_id
    now = int(time.time() * 1000)
    t0 = time.monotonic()
    for first in range(0, n, 1000):
        client.log_batch(run_id, metrics=[Metric("tp", float(i), now, i) for i in range(first, min(n, first + 1000))])
    raw = n / (time.monotonic() - t0)

    def spool(name: str, points: int) -> SpoolWriter:
        w = SpoolWriter(tmp + "/tp", name, {"tracking_uri": server.uri, "experiment_name": name, "site": SITE,
                                             "job_id": name, "run_name": name, "created_ms": int(time.time() * 1000)})
        for i in range(points):
            w.append("metric", "tp", float(i), i)
        w.close()
        return w

    # Sustained: the site's forwarder already runs and has delivered once (its imports and login done),
    # as the raw client above has.
    warm = spool(f"bench-warmup-{os.getpid()}", 1)
    start_forwarder(tmp + "/tp")
    while os.path.exists(warm.path):
        time.sleep(0.05)
    name = f"bench-throughput-{os.getpid()}"
    t0 = time.monotonic()
    w = spool(name, n)
    spooled = time.monotonic() - t0
    path = w.path
    while os.path.exists(path):
        time.sleep(0.05)
    took = time.monotonic() - t0
    rest = MLflowREST(server.uri)
    run_id = rest.runs([rest.experiment_by_name(name)["experiment_id"]])[0]["info"]["run_id"]
    got = len(rest.history(run_id, "tp"))
    print(f"3. sustained delivery: {n} points spooled in {spooled:.2f} s ({n / spooled:,.0f}/s), delivered in "
          f"{took:.1f} s: {n / took:,.0f} points/s per site ({got} in the server); raw log_batch, same server: "
          f"{raw:,.0f} points/s; ratio {n / took / raw:.2f}")


def bench_step(server, tmp: str, steps: int, blocks: int = 6):
    """Mean step time of blocks of `steps` training steps, alternating a no-op and our receiver."""
    import torch
    import torch.nn as nn
    from torch.utils.data import DataLoader

    from fedtrack.job.data import load_site_data
    from fedtrack.job.model import SimpleNetwork

    torch.manual_seed(0)
    torch.set_num_threads(1)  # as each site's client in the deployment (.env's TORCH_THREADS)
    train, _ = load_site_data("digits", 0, 2)
    loader = DataLoader(train, batch_size=32, shuffle=True)
    model, loss_fn = SimpleNetwork(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    class NoOp:
        def save(self, fl_ctx, shareable, origin):
            pass

    receivers = {"no-op receiver": NoOp(), "spooling receiver": SpoolingReceiver(server.uri, tmp + "/step", f"bench-step-{os.getpid()}")}
    times = {k: [] for k in receivers}
    step = 0

    def block(receiver):
        nonlocal step
        t0 = time.perf_counter()
        done = 0
        while done < steps:
            for x, y in loader:
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                receiver.save(None, metric_shareable(step, loss.item()), SITE)  # as MLflowWriter.log_metric sends it
                step += 1
                done += 1
                if done == steps:
                    break
        return (time.perf_counter() - t0) / steps

    block(receivers["no-op receiver"])  # warm-up
    for _ in range(blocks):
        for name, r in receivers.items():
            times[name].append(block(r))
    base, ours = (statistics.median(times[k]) for k in receivers)
    print(f"4. training step (digits, batch 32, 1 thread), median of {blocks} alternating blocks of {steps} steps: "
          f"no-op receiver {base * 1e3:.3f} ms, spooling receiver with its forwarder delivering {ours * 1e3:.3f} ms; "
          f"ratio {ours / base:.3f}")
    receivers["spooling receiver"].r.writer.close()


def round_times(uri: str, name: str, site: str) -> list:
    rest = MLflowREST(uri)
    exp = rest.experiment_by_name(f"{name}-{site}")
    run = rest.runs([exp["experiment_id"]])[0]
    start = {m["step"]: m["timestamp"] for m in rest.history(run["info"]["run_id"], "accuracy")}
    return [(start[r + 1] - start[r]) / 1000 for r in range(len(start) - 1)]


def bench_rounds(tmp: str, rounds: int):
    s1 = MLflowServer(SITE, tmp + "/r1").start()
    s2 = MLflowServer(OTHER, tmp + "/r2").start()
    try:
        res = {}
        for label, down in (("both servers up", False), (f"{SITE}'s server down", True)):
            name = f"bench-rounds-{'down' if down else 'up'}-{os.getpid()}"
            if down:
                s1.stop()
            t0 = time.monotonic()
            r = run_job("--site", f"{SITE}={s1.uri}", "--site", f"{OTHER}={s2.uri}", "--rounds", str(rounds),
                        "--env", "sim", "--workspace", tmp + "/ws-" + name, "--name", name)
            wall = time.monotonic() - t0
            assert r.returncode == 0, r.stderr[-2000:]
            if down:
                s1.start()
            time.sleep(3)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    times = round_times(s1.uri, name, SITE)
                    if len(times) == rounds - 1:
                        break
                except (OSError, TypeError, IndexError):
                    pass
                time.sleep(1)
            res[label] = (wall, statistics.mean(times))
            print(f"5. {rounds}-round job, {label}: wall {wall:.1f} s, mean round {res[label][1]:.2f} s")
    finally:
        s1.stop()
        s2.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer samples")
    args = p.parse_args()
    n = 200 if args.quick else 1000
    with tempfile.TemporaryDirectory() as tmp:
        try:
            server = MLflowServer(SITE, tmp + "/mlflow").start()
            try:
                bench_per_call(server, tmp, n)
                bench_latency(server, tmp, 20 if args.quick else 100)
                bench_throughput(server, tmp, 20000 if args.quick else 100000)
                bench_step(server, tmp, 200 if args.quick else 1000)
            finally:
                server.stop()
            bench_rounds(tmp, 3 if args.quick else 5)
        finally:
            print(f"stopped {stop_forwarders(tmp)} forwarder(s) this benchmark started")


def stop_forwarders(root: str) -> int:
    """Stop every forwarder delivering a spool under root (the "server down" ones retry forever)."""
    import glob

    from fedtrack.spool.forwarder import FORWARDER_LOCK, stop_forwarder

    return sum(stop_forwarder(os.path.dirname(lock))
               for lock in glob.glob(os.path.join(root, "**", FORWARDER_LOCK), recursive=True))


if __name__ == "__main__":
    main()
