"""Start a data-parallel run: `tunewright-train` re-runs itself under torchrun (PyTorch's elastic launcher),
one worker process per GPU, one launcher per node. HF Trainer/accelerate then set up DDP in each worker
(NCCL on GPUs, gloo on CPU). No torch at import time: the CLI decides before torch loads.

    processes per node  --nproc-per-node N, else resources.gpus (when > 1), else 1
    nodes               resources.nodes
    multi-node env      TUNEWRIGHT_NODE_RANK   this pod's node rank, 0 .. nodes-1 (required)
                        TUNEWRIGHT_MASTER_ADDR host of node rank 0, e.g. <pod>.<headless service> (required)
                        TUNEWRIGHT_MASTER_PORT rendezvous port on node rank 0 (default 29500)

A single node uses torchrun's standalone rendezvous (a free local port). Several nodes use its static
rendezvous: node rank 0 hosts the store at MASTER_ADDR:MASTER_PORT, so each process's global rank is
node_rank × nproc + local_rank and global rank 0 — the only one that writes the run — is on node 0.
Workers are recognised by the LOCAL_RANK and WORLD_SIZE torchrun gives them, and never launch again.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import tempfile
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from tunewright.config import TrainingConfig
from tunewright.ids import check_id
from tunewright.runs import RESULT, new_run_id
from tunewright.storage import Storage

NODE_RANK = "TUNEWRIGHT_NODE_RANK"
MASTER_ADDR = "TUNEWRIGHT_MASTER_ADDR"
MASTER_PORT = "TUNEWRIGHT_MASTER_PORT"
DEFAULT_MASTER_PORT = 29500
# Launcher → workers: the directory where each worker writes its one-line failure reason (rank-<RANK>),
# so the launcher can report the rank that failed first rather than the peers that lost it.
WORKER_LOGS = "TUNEWRIGHT_WORKER_LOGS"
# Launcher → workers: its pid, to tell whether it died before a worker asked to die with it.
LAUNCHER_PID = "TUNEWRIGHT_LAUNCHER_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# torchrun waits this long for workers to exit after forwarding SIGTERM (its default, 30 s, could cut a
# checkpoint upload short); the pod's terminationGracePeriodSeconds is the real limit.
SHUTDOWN_SECONDS = 3600
# Static rendezvous: how long node 0 waits for the other pods (image pulls on fresh GPU nodes take a while).
RENDEZVOUS_SECONDS = 1800


class LaunchError(RuntimeError):
    """A distributed launch that cannot start as configured; the message says what to set."""


def in_worker(env: Mapping[str, str] = os.environ) -> bool:
    return "LOCAL_RANK" in env and "WORLD_SIZE" in env


def rank(env: Mapping[str, str] = os.environ) -> int:
    return int(env.get("RANK", "0"))


def world_size(env: Mapping[str, str] = os.environ) -> int:
    return int(env.get("WORLD_SIZE", "1"))


def is_main(env: Mapping[str, str] = os.environ) -> bool:
    """Global rank 0: the one process that writes the run (checkpoints, metrics, progress, report, registry)."""
    return rank(env) == 0


@dataclass(frozen=True)
class Topology:
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = DEFAULT_MASTER_PORT

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


def _int_env(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise LaunchError(f"{name} is not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise LaunchError(f"{name} = {raw!r}: must be an integer") from None


def topology(config: TrainingConfig, nproc_per_node: int | None = None,
             env: Mapping[str, str] = os.environ, visible_gpus: int | None = None) -> Topology:
    """How many processes on how many nodes, from the config, the CLI and the operator's env."""
    gpus = config.resources.gpus
    if nproc_per_node is not None and nproc_per_node < 1:
        raise LaunchError(f"--nproc-per-node = {nproc_per_node}: must be >= 1")
    nproc = nproc_per_node or max(gpus, 1)
    if nproc_per_node is None and gpus > 1 and visible_gpus is not None and visible_gpus < gpus:
        raise LaunchError(f"resources.gpus = {gpus} but this machine has {visible_gpus} visible GPU(s); "
                          "lower resources.gpus, or pass --nproc-per-node to run that many processes anyway")
    nnodes = config.resources.nodes
    if nnodes == 1:
        return Topology(nproc)
    missing = [name for name in (NODE_RANK, MASTER_ADDR) if not env.get(name)]
    if missing:
        raise LaunchError(f"resources.nodes = {nnodes} needs {' and '.join(missing)} in the environment (the "
                          "operator sets them on each pod; by hand: the node's rank and node 0's host name)")
    node_rank = _int_env(env, NODE_RANK)
    if not 0 <= node_rank < nnodes:
        raise LaunchError(f"{NODE_RANK} = {node_rank}: must be between 0 and {nnodes - 1} "
                          f"(resources.nodes = {nnodes})")
    port = _int_env(env, MASTER_PORT, DEFAULT_MASTER_PORT)
    if not 0 < port < 65536:
        raise LaunchError(f"{MASTER_PORT} = {port}: not a TCP port")
    return Topology(nproc, nnodes, node_rank, env[MASTER_ADDR], port)


def resolve_run_id(root: Storage, name: str, run_id: str | None, resume: str | None) -> str:
    """The run to write: `run_id` if given, else a new id. Resolved once, before any worker starts, so that
    every process writes the same run. `--resume` needs `--run-id`; except with `auto` (resume if there is
    something to resume, else start: what retries and the operator pass) the run must exist. Refusals list
    the unfinished runs of `name`, newest first."""
    if not resume:
        return run_id or new_run_id(name)
    runs = root.child("runs")
    if not run_id:
        raise LaunchError(f"--resume {resume} needs --run-id (the run to resume); {_candidates(runs, name)}")
    check_id(run_id, "run id")
    if resume != "auto" and not runs.exists(run_id):
        raise LaunchError(f"--run-id {run_id}: no such run in {runs.uri}; {_candidates(runs, name)}")
    return run_id


def _candidates(runs: Storage, name: str) -> str:
    unfinished = sorted((r for r in runs.list_dirs() if r.startswith(f"{name}-") and not runs.exists(f"{r}/{RESULT}")),
                        reverse=True)
    if not unfinished:
        return f"there is no unfinished run of {name!r}"
    more = f" (and {len(unfinished) - 10} older)" if len(unfinished) > 10 else ""
    return f"unfinished runs of {name!r}: {', '.join(unfinished[:10])}{more}"


def torchrun_args(topo: Topology, worker_args: list[str]) -> list[str]:
    """torchrun's command line: `tunewright-train <worker_args>` as `python -m`, once per process."""
    if topo.nnodes == 1:
        where = ["--standalone", "--nnodes", "1"]
    else:
        assert topo.master_addr is not None
        where = ["--nnodes", str(topo.nnodes), "--node-rank", str(topo.node_rank),
                 "--master-addr", topo.master_addr, "--master-port", str(topo.master_port),
                 "--rdzv-conf", f"timeout={RENDEZVOUS_SECONDS}"]
    return [*where, "--nproc-per-node", str(topo.nproc_per_node),
            "--max-restarts", "0",  # a failed attempt is retried whole, from the last committed checkpoint
            "--shutdown-timeout", str(SHUTDOWN_SECONDS),
            "--module", "tunewright.cli.train", *worker_args]


def worker_setup(env: MutableMapping[str, str] = os.environ) -> None:
    """In a worker: write the failure reason to this rank's file for the launcher to pick from."""
    logs = env.get(WORKER_LOGS)
    if logs and in_worker(env):
        env["TUNEWRIGHT_TERMINATION_LOG"] = str(Path(logs) / f"rank-{rank(env)}")


def die_with_launcher(env: Mapping[str, str] = os.environ) -> None:
    """Have the kernel SIGKILL this worker when its launcher dies (Linux's PR_SET_PDEATHSIG), so that a
    SIGKILLed launcher (exit 137 for whoever ran it) leaves no orphan training on and publishing an adapter.
    torchrun sets no parent-death signal and Python has no prctl: hence ctypes. A launcher that died before
    the prctl is seen by the parent pid having changed (LAUNCHER_PID, set by launch())."""
    if not in_worker(env) or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    launcher = env.get(LAUNCHER_PID)
    if launcher and os.getppid() != int(launcher):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Failure:
    exit_code: int
    message: str


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N


def _describe(code: int) -> str:
    if code < 0 and -code in {s.value for s in signal.Signals}:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _reasons(logs: Path) -> list[tuple[int, str]]:
    """(rank, reason) of every worker that wrote one, the earliest written first."""
    written = sorted((p.stat().st_mtime_ns, int(p.name.removeprefix("rank-")), p) for p in logs.glob("rank-*"))
    return [(r, " ".join(p.read_text().split()) or "failed") for _, r, p in written]


def first_failure(logs: Path, exit_codes: dict[int, int], world: int) -> Failure:
    """The failure to report, from the workers' exit codes by rank: a rank killed from outside (by a signal
    other than the SIGTERM torchrun stops the survivors with; it wrote no reason: the OOM killer, a person),
    else the rank whose reason was written first (the cause: its peers then fail on a broken collective;
    of ranks that wrote that same reason, the lowest: rank 0's refusal, which distributed.on_rank_0_first
    has the others repeat), else the lowest rank that exited by itself. When every failed worker exited 143
    (SIGTERM: checkpointed and stopped), so does the launcher."""
    reasons = _reasons(logs)
    explained = {r for r, _ in reasons}
    killed = sorted(r for r, c in exit_codes.items() if c < 0 and -c != signal.SIGTERM and r not in explained)
    if killed:
        first = exited = killed[0]
        text = _describe(exit_codes[first])
    elif reasons:
        text = reasons[0][1]
        same = sorted(r for r, said in reasons if said == text)
        first = same[0]
        # The exit code of one that exited by itself: torchrun may have stopped rank 0 as it was exiting.
        exited = next((r for r in same if exit_codes.get(r, 1) >= 0), first)
    elif exit_codes:  # a rank that exited by itself, before one that torchrun then stopped with a signal
        first = exited = min(exit_codes, key=lambda r: (exit_codes[r] < 0, r))
        text = _describe(exit_codes[first])
    else:
        first = exited = 0
        text = "failed without an exit code"
    code = _exit_code(exit_codes.get(exited, next(iter(exit_codes.values()), 1)))
    if exit_codes and all(_exit_code(c) == 143 for c in exit_codes.values()):
        code = 143
    return Failure(code, f"rank {first} of {world}: {text}")


def signalled_failure(logs: Path, sig: signal.Signals) -> Failure:
    """The launcher was stopped by `sig` (torchrun forwarded it and waited for the workers): rank 0's reason
    and exit code, so that 143 still means "checkpoint committed" and not merely "SIGTERM was received"."""
    reason = dict(_reasons(logs)).get(0)
    code = _worker_exit_codes(logs).get(0)
    if code is None:
        return Failure(1, f"rank 0: stopped by {sig.name} and exited without saying whether its checkpoint "
                          "was committed")
    return Failure(code, f"rank 0: {reason or f'stopped by {sig.name}, exit code {code}'}")


def worker_exit(code: int, env: Mapping[str, str] = os.environ) -> None:
    """In a worker: record its exit code for the launcher (torchrun does not pass it on after a signal)."""
    logs = env.get(WORKER_LOGS)
    if logs and in_worker(env):
        with contextlib.suppress(OSError):
            (Path(logs) / f"exit-{rank(env)}").write_text(str(code))


def _worker_exit_codes(logs: Path) -> dict[int, int]:
    return {int(p.name.removeprefix("exit-")): int(p.read_text()) for p in logs.glob("exit-*")}


def launch(topo: Topology, worker_args: list[str]) -> Failure | None:
    """Run the workers under torchrun in this process (its agent forwards SIGTERM/SIGINT to them and
    waits for them); None when every worker succeeded, else the failure to report."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    with tempfile.TemporaryDirectory(prefix="tunewright-workers-") as tmp:
        logs = Path(tmp)
        os.environ[WORKER_LOGS] = tmp
        os.environ[LAUNCHER_PID] = str(os.getpid())
        try:
            run(parse_args(torchrun_args(topo, worker_args)))
            return None
        except ChildFailedError as err:
            return first_failure(logs, {r: f.exitcode for r, f in err.failures.items()}, topo.world_size)
        except SignalException as err:  # forwarded to the workers, which have exited: rank 0 says how
            return signalled_failure(logs, err.sigval)
        finally:
            os.environ.pop(WORKER_LOGS, None)
            os.environ.pop(LAUNCHER_PID, None)


def worker_argv(argv: list[str], run_id: str) -> list[str]:
    """The workers' CLI arguments: the launcher's own with the resolved run id pinned (the last wins)."""
    return [*argv, "--run-id", run_id]
