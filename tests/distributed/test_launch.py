"""The launcher's decisions without starting anything: topology from config/CLI/env, torchrun's command line,
which failure is reported, and the run id every worker gets."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.trainer import quick_config
from tunewright.storage import Storage
from tunewright.training import launch
from tunewright.training.launch import LaunchError, Topology

MULTI = {launch.NODE_RANK: "1", launch.MASTER_ADDR: "tj-a1-0.tj-a1.ns.svc", launch.MASTER_PORT: "29600"}


def test_one_gpu_or_none_is_one_process_and_more_gpus_one_process_each() -> None:
    assert launch.topology(quick_config("songs"), env={}).world_size == 1
    assert launch.topology(quick_config("songs", **{"resources.gpus": 1}), env={}).world_size == 1
    assert launch.topology(quick_config("songs", **{"resources.gpus": 4}), env={}, visible_gpus=4) == Topology(4)
    assert launch.topology(quick_config("songs"), nproc_per_node=2, env={}) == Topology(2)


def test_more_gpus_than_visible_is_refused_unless_the_process_count_is_explicit() -> None:
    config = quick_config("songs", **{"resources.gpus": 4})
    with pytest.raises(LaunchError, match=r"resources.gpus = 4 but this machine has 0 visible GPU"):
        launch.topology(config, env={}, visible_gpus=0)
    assert launch.topology(config, nproc_per_node=2, env={}, visible_gpus=0) == Topology(2)
    with pytest.raises(LaunchError, match=r"--nproc-per-node = 0: must be >= 1"):
        launch.topology(config, nproc_per_node=0, env={})


def test_multi_node_topology_comes_from_the_operators_env() -> None:
    config = quick_config("songs", **{"resources.gpus": 2, "resources.nodes": 3})
    topo = launch.topology(config, env=MULTI, visible_gpus=2)
    assert topo == Topology(2, 3, 1, "tj-a1-0.tj-a1.ns.svc", 29600)
    assert topo.world_size == 6
    default_port = {k: v for k, v in MULTI.items() if k != launch.MASTER_PORT}
    assert launch.topology(config, env=default_port, visible_gpus=2).master_port == 29500


@pytest.mark.parametrize(("env", "message"), [
    ({}, "needs TUNEWRIGHT_NODE_RANK and TUNEWRIGHT_MASTER_ADDR in the environment"),
    ({launch.MASTER_ADDR: "h"}, "needs TUNEWRIGHT_NODE_RANK in the environment"),
    ({**MULTI, launch.NODE_RANK: "3"}, r"TUNEWRIGHT_NODE_RANK = 3: must be between 0 and 2"),
    ({**MULTI, launch.NODE_RANK: "one"}, r"TUNEWRIGHT_NODE_RANK = 'one': must be an integer"),
    ({**MULTI, launch.MASTER_PORT: "70000"}, r"TUNEWRIGHT_MASTER_PORT = 70000: not a TCP port"),
])
def test_multi_node_env_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(LaunchError, match=message):
        launch.topology(quick_config("songs", **{"resources.nodes": 3}), env=env)


def test_torchrun_command_line() -> None:
    single = launch.torchrun_args(Topology(2), ["--config", "c.yaml"])
    assert single[:5] == ["--standalone", "--nnodes", "1", "--nproc-per-node", "2"]
    assert single[-4:] == ["--module", "tunewright.cli.train", "--config", "c.yaml"]
    assert single[single.index("--max-restarts") + 1] == "0"
    assert int(single[single.index("--shutdown-timeout") + 1]) >= 600
    multi = launch.torchrun_args(Topology(4, 2, 1, "master.svc", 29600), ["--quiet"])
    assert "--standalone" not in multi
    assert multi[-3:] == ["--module", "tunewright.cli.train", "--quiet"]
    flags = dict(zip(multi[:-3:2], multi[1:-3:2], strict=True))
    assert flags == {"--nnodes": "2", "--node-rank": "1", "--master-addr": "master.svc", "--master-port": "29600",
                     "--rdzv-conf": f"timeout={launch.RENDEZVOUS_SECONDS}", "--nproc-per-node": "4",
                     "--max-restarts": "0", "--shutdown-timeout": str(launch.SHUTDOWN_SECONDS)}


def test_workers_get_the_resolved_run_id_and_a_termination_file_each(root: Storage, tmp_path: Path) -> None:
    new = launch.resolve_run_id(root, "songs-sft", None, None)
    assert new.startswith("songs-sft-")
    assert launch.worker_argv(["--config", "c"], new) == ["--config", "c", "--run-id", new]
    root.write_text("runs/songs-sft-20260101-000000-aaaa/config.json", "{}")
    root.write_text("runs/songs-sft-20260102-000000-bbbb/config.json", "{}")
    root.write_text("runs/songs-sft-20260102-000000-bbbb/result.json", "{}")
    root.write_text("runs/songs-sft-20260103-000000-cccc/config.json", "{}")
    with pytest.raises(LaunchError, match=r"^--resume latest needs --run-id .*; unfinished runs of 'songs-sft': "
                                          r"songs-sft-20260103-000000-cccc, songs-sft-20260101-000000-aaaa$"):
        launch.resolve_run_id(root, "songs-sft", None, "latest")
    with pytest.raises(LaunchError, match=r"^--run-id songs-sft-20260103-000000-ccc: no such run in .*; unfinished "
                                          r"runs of 'songs-sft': songs-sft-20260103-000000-cccc, "):
        launch.resolve_run_id(root, "songs-sft", "songs-sft-20260103-000000-ccc", "latest")
    with pytest.raises(LaunchError, match="there is no unfinished run of 'other'"):
        launch.resolve_run_id(root, "other", None, "checkpoint-4")
    assert launch.resolve_run_id(root, "songs-sft", "fresh", "auto") == "fresh"  # retries, the operator
    assert launch.resolve_run_id(root, "x", "songs-sft-20260101-000000-aaaa", "latest") == \
        "songs-sft-20260101-000000-aaaa"

    env = {"LOCAL_RANK": "1", "WORLD_SIZE": "4", "RANK": "3", launch.WORKER_LOGS: str(tmp_path)}
    launch.worker_setup(env)
    assert env["TUNEWRIGHT_TERMINATION_LOG"] == str(tmp_path / "rank-3")
    outside = {launch.WORKER_LOGS: str(tmp_path)}
    launch.worker_setup(outside)  # the launcher itself keeps the pod's termination log
    assert "TUNEWRIGHT_TERMINATION_LOG" not in outside


def _write(path: Path, text: str) -> None:
    path.write_text(text)
    time.sleep(0.01)  # distinct mtimes


def test_the_failure_reported_is_the_rank_that_failed_first(tmp_path: Path) -> None:
    _write(tmp_path / "rank-1", "CUDA out of memory on device 1\n")
    _write(tmp_path / "rank-0", "RuntimeError: Connection closed by peer")
    failure = launch.first_failure(tmp_path, {0: 1, 1: 3}, 2)
    assert failure == launch.Failure(3, "rank 1 of 2: CUDA out of memory on device 1")


def test_a_reason_that_several_ranks_wrote_is_named_as_the_lowest_ranks(tmp_path: Path) -> None:
    # Rank 0's refusal (the run's lease), which the other ranks repeat (distributed.on_rank_0_first) and
    # rank 1 happened to write first.
    _write(tmp_path / "rank-1", "run r is being written by pod-a (pid 7, since T), which renews its lease")
    _write(tmp_path / "rank-0", "run r is being written by pod-a (pid 7, since T), which renews its lease")
    refused = launch.Failure(1, "rank 0 of 2: run r is being written by pod-a (pid 7, since T), which renews its lease")
    assert launch.first_failure(tmp_path, {0: 1, 1: 1}, 2) == refused
    # Rank 1 exited first and torchrun stopped rank 0 with SIGTERM as it was exiting: still not 143.
    assert launch.first_failure(tmp_path, {0: -15, 1: 1}, 2) == refused


def test_failures_without_a_reason_and_sigterm_stops(tmp_path: Path) -> None:
    assert launch.first_failure(tmp_path, {1: -9, 0: -9}, 2) == launch.Failure(137, "rank 0 of 2: killed by SIGKILL")
    # Rank 1 exited by itself; torchrun then stopped rank 0 with SIGTERM.
    assert launch.first_failure(tmp_path, {0: -15, 1: 2}, 2) == launch.Failure(2, "rank 1 of 2: exited with code 2")
    _write(tmp_path / "rank-0", "stopped by SIGTERM at step 7; checkpoint committed")
    _write(tmp_path / "rank-1", "stopped by SIGTERM at step 7; checkpoint committed")
    assert launch.first_failure(tmp_path, {0: 143, 1: 143}, 2).exit_code == 143
    assert os.path.exists(tmp_path / "rank-1")


def test_workers_failing_under_torchrun_report_one_line_and_their_exit_code(tmp_path: Path) -> None:
    # Real torchrun, two real workers that fail at once (their config file is missing): no torch in them.
    code = ("import sys; from tunewright.training import launch; "
            "f = launch.launch(launch.Topology(2), ['--config', sys.argv[1]]); "
            "print(f.message); sys.exit(f.exit_code)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing.yaml")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    assert re.fullmatch(r"rank [01] of 2: cannot read .*missing\.yaml: "
                        r"No such file or directory\n", out.stdout), out.stdout


def test_a_rank_killed_from_outside_is_reported_rather_than_the_peer_that_lost_it(tmp_path: Path) -> None:
    _write(tmp_path / "rank-0", "[gloo/pair.cc:537] Read error [127.0.0.1]:53680: Connection reset by peer")
    assert launch.first_failure(tmp_path, {0: 1, 1: -9}, 2) == launch.Failure(137, "rank 1 of 2: killed by SIGKILL")
    # torchrun stopped rank 0 with SIGTERM after rank 1 died: rank 1 is still the one named, and not as 143.
    assert launch.first_failure(tmp_path, {0: -15, 1: -9}, 2) == launch.Failure(137, "rank 1 of 2: killed by SIGKILL")


def test_a_launcher_stopped_by_sigterm_exits_143_only_when_rank_0_committed(tmp_path: Path) -> None:
    committed, late, silent = tmp_path / "committed", tmp_path / "late", tmp_path / "silent"
    for logs in (committed, late, silent):
        logs.mkdir()
    env = {"LOCAL_RANK": "0", "WORLD_SIZE": "2", "RANK": "0"}
    _write(committed / "rank-0", "stopped by SIGTERM at step 7; checkpoint committed")
    launch.worker_exit(143, {**env, launch.WORKER_LOGS: str(committed)})
    assert launch.signalled_failure(committed, signal.SIGTERM) == \
        launch.Failure(143, "rank 0: stopped by SIGTERM at step 7; checkpoint committed")
    _write(late / "rank-0", "stopped by SIGTERM at step 7, but its checkpoint could not be committed within the "
                            "30 s grace period")
    launch.worker_exit(1, {**env, launch.WORKER_LOGS: str(late)})
    assert launch.signalled_failure(late, signal.SIGTERM).exit_code == 1
    failure = launch.signalled_failure(silent, signal.SIGTERM)
    assert failure.exit_code == 1 and "without saying whether its checkpoint was committed" in failure.message
