"""Client training script (NVFlare Client API, run in-process by each site).

Every metric goes through nvflare's MLflowWriter as a *local* event; the site's own receiver
delivers it to the site's own MLflow server. Nothing here talks to MLflow or to the FL server
directly, except the model update that `flare.send` returns. After the last round the server sends
the final global model once more (a "validate" task): it is evaluated, saved in MLflow's format in
the site's spool folder, and the site's forwarder uploads it into the site's run.
"""

import argparse
import logging
import os
import shutil
import tempfile

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

import nvflare.client as flare
from nvflare.apis.analytix import AnalyticsDataType, LogWriterName
from nvflare.client.tracking import MLflowWriter

from fedtrack.job.data import DATASETS, load_site_data
from fedtrack.job.model import SimpleNetwork
from fedtrack.names import SPOOL_DIR

log = logging.getLogger("fedtrack.client")


def parse_args():
    # The job (job.py) states every training setting: its defaults are the only ones.
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--site-index", type=int, required=True)
    p.add_argument("--num-sites", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--local-epochs", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--torch-threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--register-model", default="", help="also register the final model under this name in the site's registry")
    return p.parse_args()


def evaluate(model, loader, device) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            pred = model(x.to(device)).argmax(dim=1)
            correct += (pred == y.to(device)).sum().item()
            total += y.size(0)
    return correct / max(total, 1)


def save_for_mlflow(model) -> str:
    """The model in MLflow's PyTorch format, in a new folder of the site's spool folder (the job
    process runs in the site's workspace): the forwarder uploads only from there. pt2 (a traced
    graph) loads without this code and without unpickling, which MLflow refuses by default."""
    import mlflow.pytorch  # only here: training never needs MLflow

    folder = tempfile.mkdtemp(prefix="model-", dir=os.path.join(os.getcwd(), SPOOL_DIR))
    try:
        mlflow.pytorch.save_model(
            model.cpu().eval(), folder, serialization_format="pt2",
            input_example=torch.zeros(2, 3, 32, 32).numpy(),  # only its shape is kept: batch size free, no site data
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # nothing half-written stays in the spool folder
        raise
    return folder


def main():
    args = parse_args()
    torch.manual_seed(args.seed + args.site_index)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train_set, test_set = load_site_data(args.dataset, args.site_index, args.num_sites, args.data_dir)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=256)
    steps_per_round = args.local_epochs * len(train_loader)

    model = SimpleNetwork().to(device)
    loss_fn = nn.CrossEntropyLoss()

    # (1) join the federation; (2) open the site-local metric stream
    flare.init()
    site = flare.get_site_name()
    writer = MLflowWriter()
    log.info("%s: %d training / %d test samples of %s on %s", site, len(train_set), len(test_set), args.dataset, device)

    total_rounds = local_accuracy = None
    while flare.is_running():
        # (3) receive the global model
        input_model = flare.receive()
        model.load_state_dict(input_model.params)

        if flare.is_evaluate():
            # (7) after the last round: the final global model, evaluated and kept in this site's run
            accuracy = evaluate(model, test_loader, device)
            writer.log_metric("accuracy", accuracy, step=total_rounds)
            writer.log_text(
                f"site: {site}\ndataset: {args.dataset}\nrounds: {total_rounds}\n"
                f"final global-model accuracy: {accuracy:.4f}\nfinal local accuracy: {local_accuracy:.4f}\n",
                "summary.txt",
            )
            try:
                folder = save_for_mlflow(model)
            except Exception as e:  # noqa: BLE001 - e.g. a full spool volume: it costs the model, never the job
                log.error("%s: the final model could not be saved for its run: %s", site, e)
            else:
                # The artifact path, and the folder the forwarder uploads to it (fedtrack.site.records).
                flare.log("model", folder, AnalyticsDataType.MODEL, writer=LogWriterName.MLFLOW,
                          registered_model_name=args.register_model)
                log.info("%s: final global model evaluated and saved", site)
            # An empty reply: nothing metric-like reaches the server.
            flare.send(flare.FLModel(metrics={}))
            model.to(device)
            continue

        rnd, total_rounds = input_model.current_round, input_model.total_rounds
        if rnd == 0:
            writer.log_params(
                {
                    "learning_rate": args.lr,
                    "batch_size": args.batch_size,
                    "local_epochs": args.local_epochs,
                    "dataset": args.dataset,
                    "rounds": total_rounds,
                    "train_samples": len(train_set),
                    "test_samples": len(test_set),
                }
            )

        # (4) evaluate the global model on this site's test split
        accuracy = evaluate(model, test_loader, device)
        writer.log_metric("accuracy", accuracy, step=rnd)

        # (5) train locally; one global step index, contiguous across rounds, from 0
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
        model.train()
        step = rnd * steps_per_round
        for _ in range(args.local_epochs):
            for x, y in train_loader:
                optimizer.zero_grad()
                loss = loss_fn(model(x.to(device)), y.to(device))
                loss.backward()
                optimizer.step()
                writer.log_metric("train_loss", loss.item(), step=step)
                step += 1

        local_accuracy = evaluate(model, test_loader, device)
        writer.log_metric("local_accuracy", local_accuracy, step=rnd)
        # Progress only: a site's log can be handed out by FLARE, so metric values go to its MLflow alone.
        log.info("%s: round %d/%d trained", site, rnd + 1, total_rounds)

        # (6) send the local model back: weights and step count only; metrics stay at the site
        flare.send(flare.FLModel(params=model.cpu().state_dict(), meta={"NUM_STEPS_CURRENT_ROUND": steps_per_round}))
        model.to(device)


if __name__ == "__main__":
    main()
