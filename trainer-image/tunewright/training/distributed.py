"""Data parallelism inside a worker, on top of what HF Trainer and accelerate already do (DDP, sharding
each global batch across ranks, averaging gradients and logged losses, saving on rank 0).

What they leave to us:
- The run has one writer, global rank 0 (launch.is_main); the other ranks train and write nothing.
- HF saves each rank's RNG state in that rank's own output_dir, and only rank 0's checkpoint is committed:
  `CheckpointRanks` gathers them into it, with the world size that wrote it, before the commit.
- A resume must use the world size of its checkpoint: HF skips data by optimizer step, and with the
  configuration fixed (batch size and accumulation), another world size means another global batch, so
  the step count no longer says where the data stopped (`check_resume_world` refuses it).
- SIGTERM reaches the ranks at slightly different steps; `AgreedSigterm` stops them all at the same step
  (a rank that stopped alone would leave the others waiting in a collective).
- Before any rank reads the run, rank 0 takes its lease and the others wait for the outcome
  (`on_rank_0_first`): a refusal is then every rank's error, with rank 0's line, rather than a peer failing
  first on a checkpoint that the lease's holder is deleting.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tunewright.training import launch
from tunewright.training.callbacks import SigtermCallback

WORLD_FILE = "distributed.json"


class WorldSizeChanged(RuntimeError):
    pass


class Rank0Failed(RuntimeError):
    """What rank 0 failed with, raised on the other ranks: its one line, word for word."""


def on_rank_0_first(action: Callable[[], None]) -> None:
    """Run `action` on global rank 0 while the other ranks wait; if it raises, rank 0 raises that and every
    other rank Rank0Failed with the same line (so the launcher reports it once, as rank 0's: see
    launch.first_failure). One process: just `action`."""
    if launch.world_size() == 1:
        action()
        return
    _join_process_group()
    if launch.is_main():
        try:
            action()
        except Exception as err:
            # The others repeat it and may exit first; torchrun then stops rank 0 with SIGTERM, which must not
            # replace the line rank 0 is about to write as it exits.
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with contextlib.suppress(RuntimeError):  # a peer already gone: rank 0's own error still stands
                dist.broadcast_object_list([str(err) or type(err).__name__], src=0)
            raise
        dist.broadcast_object_list([None], src=0)
        return
    failure: list[str | None] = [None]
    dist.broadcast_object_list(failure, src=0)
    if failure[0] is not None:
        raise Rank0Failed(failure[0])


def _join_process_group() -> None:
    """Initialise torch.distributed now, as TrainingArguments would when it first sets up its device (its
    _setup_devices: accelerate's PartialState with these arguments); HF then finds it initialised and uses
    it. Earlier than HF because the ranks must agree before any of them reads the run."""
    from accelerate import PartialState
    from transformers import TrainingArguments

    if not torch.cuda.is_available():  # training_arguments' use_cpu
        PartialState(cpu=True)
    else:
        PartialState(timeout=timedelta(seconds=TrainingArguments.ddp_timeout))


def recorded_world_size(checkpoint: Path) -> int:
    """The number of processes that trained up to `checkpoint` (checkpoints without the record are older
    than multi-process training: one process)."""
    path = checkpoint / WORLD_FILE
    return int(json.loads(path.read_text())["worldSize"]) if path.exists() else 1


def check_resume_world(checkpoint: Path, world: int, per_process_batch: int) -> None:
    old = recorded_world_size(checkpoint)
    if old != world:
        raise WorldSizeChanged(
            f"{checkpoint.name} was trained by {old} process(es) and this run has {world}: the global batch "
            f"would change from {per_process_batch * old} to {per_process_batch * world} samples per step "
            "(batch size x processes x accumulation), so the resumed data order and schedule would not "
            f"continue the run; resume with {old} process(es) (resources.gpus x resources.nodes, or "
            "--nproc-per-node) or start a new run")


def describe_batch(args: TrainingArguments) -> str:
    per_device, world, accumulation = args.per_device_train_batch_size, args.world_size, \
        args.gradient_accumulation_steps
    return (f"global batch {per_device * world * accumulation} = {per_device} per device x {world} "
            f"process(es) x {accumulation} accumulation step(s)")


class CheckpointRanks(TrainerCallback):
    """On every save, before the commit: rank 0's checkpoint gets every rank's RNG state (so a resume
    continues each rank's dropout exactly) and the world size; the other ranks drop their partial copy.

    Must come before CommitCheckpointCallback. Every rank saves at the same steps (the save decisions
    depend only on the step, the epoch, gathered eval metrics and AgreedSigterm), so the gather matches up.
    """

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if args.world_size > 1:
            self._gather_rng_states(args, local)
        if state.is_world_process_zero:
            (local / WORLD_FILE).write_text(json.dumps({"worldSize": args.world_size}))
        else:
            shutil.rmtree(local, ignore_errors=True)

    @staticmethod
    def _gather_rng_states(args: TrainingArguments, local: Path) -> None:
        name = f"rng_state_{args.process_index}.pth"
        mine = (name, (local / name).read_bytes() if (local / name).exists() else None)
        gathered: list[Any] | None = [None] * args.world_size if args.process_index == 0 else None
        dist.gather_object(mine, gathered, dst=0)
        for other, data in gathered or []:
            if data is not None and not (local / other).exists():
                (local / other).write_bytes(data)


class AgreedSigterm(SigtermCallback):
    """SigtermCallback for several processes: the signal only marks this rank; at each step end the ranks
    agree (one all-reduce of a flag) and all stop at that step, checkpointing together."""

    def __init__(self) -> None:
        self.received = False
        super().__init__()

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True
        self.at = time.monotonic()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        flag = torch.tensor([1.0 if self.received else 0.0], device=args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.requested = bool(flag.item())
        super().on_step_end(args, state, control, **kwargs)


def sigterm_callback() -> SigtermCallback:
    return AgreedSigterm() if launch.world_size() > 1 else SigtermCallback()
