"""`tunewright-train`: train a LoRA adapter from a dataset id and a config file."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from tunewright.cli.common import Parser, fail, run_cli
from tunewright.config import TrainingConfig, apply_overrides, load_config, validate
from tunewright.documents import parse_yaml
from tunewright.storage import open_storage
from tunewright.training import launch


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="tunewright-train", description=__doc__)
    p.add_argument("--config", help="YAML or JSON training configuration (camelCase keys)")
    p.add_argument("--dataset", help="dataset id (sets dataset.id)")
    p.add_argument("--storage", help="storage root URI (default $TUNEWRIGHT_STORAGE or file://./.tunewright)")
    p.add_argument("--run-id", help="run id (default <name>-<timestamp>); retries pass the same id")
    p.add_argument("--resume", help="with --run-id: 'latest' or a checkpoint name (e.g. checkpoint-40) of that "
                   "run, or 'auto': the latest checkpoint if any, else start the run (retries, the operator)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one field, e.g. --set training.learningRate=1e-3 (repeatable)")
    p.add_argument("--metrics-port", type=_port, default=os.environ.get("TUNEWRIGHT_METRICS_PORT", "9400"),
                   help="Prometheus /metrics port (0 disables; default 9400; also $TUNEWRIGHT_METRICS_PORT)")
    p.add_argument("--quiet", action="store_true", help="no progress display, no progress bars")
    p.add_argument("--nproc-per-node", type=_positive, metavar="N",
                   help="data-parallel processes on this machine (default: resources.gpus when > 1, else 1); "
                        "more than one process in all runs under torchrun")
    return p


def _port(text: str) -> int:
    """argparse type: a TCP port or 0 (checked before anything loads; a default string is parsed too)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; use 0 (off) or a port 1-65535") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port; use 0 (off) or a port 1-65535")
    return port


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be >= 1")
    return value


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        out[key] = parse_yaml(value, f"--set {key}")
    if args.dataset:
        out["dataset"] = {"id": args.dataset}
    return out


def resolve_config(args: argparse.Namespace) -> TrainingConfig:
    if args.config:
        return load_config(args.config, overrides(args))
    return validate(apply_overrides({}, overrides(args)), TrainingConfig, "command-line configuration")


def main(argv: list[str] | None = None) -> int:
    launch.die_with_launcher()
    launch.worker_setup()  # before anything can fail
    args = parser().parse_args(argv)
    if args.quiet:  # also the Hub's and transformers' bars ("Loading weights"), here and in torchrun's workers
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "botocore", "urllib3", "transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    code = run_cli(lambda: train(args, sys.argv[1:] if argv is None else argv))
    launch.worker_exit(code)
    return code


def train(args: argparse.Namespace, argv: list[str]) -> int:
    config = resolve_config(args)
    root = open_storage(args.storage)  # a bad URI is refused before torch loads
    if not launch.in_worker():
        topo = launch.topology(config, args.nproc_per_node, visible_gpus=_visible_gpus(config))
        if topo.world_size > 1:
            return distributed(args, config, topo, argv)
    from tunewright.training.run import Run, TrainingInterrupted  # torch loads only after the config is valid

    if args.quiet:
        _no_library_bars()
    try:
        outcome = Run(config, root, args.run_id, args.resume,
                      args.metrics_port or None, display=not args.quiet).execute()
    except TrainingInterrupted as err:
        return fail(str(err), 143)
    if outcome.result is not None and launch.is_main():  # one line, from rank 0 of a multi-process run
        print(outcome.result.adapter_uri)
    return 0


def _no_library_bars() -> None:
    """Turn off transformers' and the Hub's progress bars ("Loading weights", downloads). Both read
    HF_HUB_DISABLE_PROGRESS_BARS (set by main() for torchrun's workers) only when first imported, which a
    host program or test may have done before main() ran."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils.logging import disable_progress_bar

    disable_progress_bars()
    disable_progress_bar()


def _visible_gpus(config: TrainingConfig) -> int | None:
    if config.resources.gpus <= 1:
        return None
    import torch

    return torch.cuda.device_count()


def distributed(args: argparse.Namespace, config: TrainingConfig, topo: launch.Topology, argv: list[str]) -> int:
    """Re-run this command under torchrun, `topo.nproc_per_node` workers on this node (see launch.py)."""
    if topo.nnodes > 1 and not args.run_id:
        raise launch.LaunchError(f"resources.nodes = {topo.nnodes} needs --run-id: every node must write the same run")
    run_id = launch.resolve_run_id(open_storage(args.storage), config.adapter_name(), args.run_id, args.resume)
    failure = launch.launch(topo, launch.worker_argv(argv, run_id))
    return fail(failure.message, failure.exit_code) if failure else 0


if __name__ == "__main__":
    sys.exit(main())
