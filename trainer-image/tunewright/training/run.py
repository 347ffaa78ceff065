"""One training run, start to finish: dataset → base model + LoRA → HF Trainer (with checkpoints, resume,
early stopping, metrics) → best weights → adapter + report → registry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import EarlyStoppingCallback, PrinterCallback, TrainingArguments, set_seed

from tunewright.config import TrainingConfig
from tunewright.data.rows import Row
from tunewright.data.split import split_by_prompt
from tunewright.data.store import DatasetMeta, DatasetStore, load_rows, open_dataset
from tunewright.lease import LeaseLost, RunLease
from tunewright.models.loading import load_base
from tunewright.outages import Outage, RetryingStorage
from tunewright.registry import (
    AdapterRecord,
    DatasetProvenance,
    Registry,
    ReportSummary,
    TrainingJobRef,
    VersionTaken,
)
from tunewright.runs import (
    ADAPTER,
    CONFIG,
    METRICS,
    PROGRESS,
    REPORT,
    REPORT_PAGE,
    RESULT,
    Progress,
    RunResult,
    RunStore,
    now_iso,
)
from tunewright.storage import Storage
from tunewright.training.callbacks import (
    CommitCheckpointCallback,
    EpochEndCallback,
    LeaseCallback,
    RunLogCallback,
    TerminalDisplay,
)
from tunewright.training.checkpoints import CheckpointError, CheckpointInfo, CheckpointStore
from tunewright.training.distributed import (
    CheckpointRanks,
    check_resume_world,
    describe_batch,
    on_rank_0_first,
    sigterm_callback,
)
from tunewright.training.family import CausalLMFamily, Family
from tunewright.training.launch import is_main, resolve_run_id
from tunewright.training.listen import listen
from tunewright.training.objectives import DataError, objective_for
from tunewright.training.report import build_report, print_summary
from tunewright.training.trainer import ExampleDataset, ObjectiveTrainer

log = logging.getLogger(__name__)

PUBLISH_ATTEMPTS = 20
GRACE_ENV = "TUNEWRIGHT_TERMINATION_GRACE_SECONDS"  # the pod's terminationGracePeriodSeconds
GRACE_MARGIN = 10.0  # seconds of the grace period kept for writing progress.json and exiting
FAILED_WAIT_SECONDS = 30.0  # how long a failing run waits for its last checkpoint, then for progress.json


class RunError(RuntimeError):
    """A run that cannot start or continue, with a reason a user can act on."""


class TrainingInterrupted(RuntimeError):
    """SIGTERM: a checkpoint was committed and the process should exit (143) to be resumed later."""


@dataclass
class Dataset:
    meta: DatasetMeta
    dir: Storage
    rows: list[Row]


@dataclass
class Outcome:
    run_id: str
    result: RunResult | None  # None on the ranks other than 0 of a multi-process run: rank 0 publishes
    report: dict[str, Any]
    model: Any = None
    processor: Any = None


def resolve_dataset(config: TrainingConfig, root: Storage) -> Dataset:
    if config.dataset is None:
        raise RunError("no dataset: set dataset.id (or --dataset) or dataset.uri")
    if config.dataset.id:
        store = DatasetStore(root)
        meta = store.meta(config.dataset.id)
        ds = store.datasets.child(config.dataset.id)
    else:
        ds, meta = open_dataset(config.dataset.uri or "")
    return Dataset(meta, ds, load_rows(ds, meta))


def family_for(model_type: str, processor: Any, config: TrainingConfig, dataset: Dataset, model: Any) -> Family:
    if model_type == "musicgen":
        from tunewright.training.musicgen import MusicgenFamily

        return MusicgenFamily(processor, model, config, dataset.dir)
    return CausalLMFamily(processor, config.data.max_length)


def with_lora(model: Any, config: TrainingConfig, family: Family) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = config.lora
    peft_config = LoraConfig(
        r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules or family.default_target_modules,
        modules_to_save=lora.modules_to_save,
        task_type="CAUSAL_LM" if family.name == "causal-lm" else None,
    )
    with warnings.catch_warnings():
        # PEFT 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`: nothing a user can act on.
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        return get_peft_model(model, peft_config)


def training_arguments(config: TrainingConfig, output_dir: Path, has_eval: bool) -> TrainingArguments:
    t, ck = config.training, config.checkpointing
    if config.training.precision == "fp16" and not torch.cuda.is_available():
        raise RunError("training.precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    every = ck.every_steps
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate, num_train_epochs=t.epochs, max_steps=t.max_steps or -1,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float < 1 is a ratio
        lr_scheduler_type=t.lr_scheduler, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, seed=t.seed, data_seed=t.seed,
        bf16=t.precision == "bf16", fp16=t.precision == "fp16", use_cpu=not torch.cuda.is_available(),
        logging_steps=t.log_every_steps,
        eval_strategy=("steps" if every else "epoch") if has_eval else "no", eval_steps=every,
        save_strategy="steps" if every else "epoch", save_steps=every, save_total_limit=None,
        metric_for_best_model="eval_loss" if has_eval else None, greater_is_better=False,
        restore_callback_states_from_checkpoint=True,
        report_to=[], disable_tqdm=True, remove_unused_columns=False, label_names=[],
        dataloader_num_workers=0, activation_checkpointing=False,
    )


def initial_eval_loss(trainer: ObjectiveTrainer) -> float | None:
    """Validation loss of the untrained adapter, computed outside the Trainer so no callback sees it.
    Over the whole validation split in this process (not the rank's shard), with no collective calls."""
    if trainer.eval_dataset is None:
        return None
    model = trainer.model
    model.eval()
    total, batches = 0.0, 0
    loader = DataLoader(trainer.eval_dataset, batch_size=trainer.args.per_device_eval_batch_size,
                        collate_fn=trainer.data_collator)
    with torch.no_grad():
        for batch in loader:
            loss, _ = trainer.objective.loss(model, trainer._prepare_inputs(batch), trainer.family)
            total, batches = total + float(loss), batches + 1
    model.train()
    return total / max(batches, 1)


TRAINER_STATE = "trainer_state.json"


def _finished(checkpoint_dir: Path) -> bool:
    """True when the checkpoint was saved at the run's last step (HF's trainer_state.json says so)."""
    try:
        state = json.loads((checkpoint_dir / TRAINER_STATE).read_text())
        return 0 < int(state["max_steps"]) <= int(state["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def record_config(run: RunStore, config: TrainingConfig) -> None:
    """config.json of a new run, written once the model and data are ready (a refused start leaves no run)."""
    if is_main() and not run.dir.exists(CONFIG):
        run.dir.write_text(CONFIG, json.dumps(config.to_dict(), indent=2, sort_keys=True))


def check_config_matches(run: RunStore, config: TrainingConfig, complete: bool = False) -> None:
    """A resumed run continues only under the configuration it started with; a complete run is reported
    as complete only for that configuration."""
    if not run.dir.exists(CONFIG):
        return
    try:
        stored = json.loads(run.dir.read_bytes(CONFIG))
        assert isinstance(stored, dict)
    except (ValueError, AssertionError):
        raise RunError(f"{run.dir.uri}/{CONFIG} is corrupt (not a JSON object); start a new run") from None
    current = config.to_dict()
    changed = sorted(k for k in set(stored) | set(current) if k != "resources" and stored.get(k) != current.get(k))
    if changed and complete:
        raise RunError(f"run {run.run_id} is complete and was trained with a different configuration (changed: "
                       f"{', '.join(changed)}); use a new run id to train this one")
    if changed:
        raise RunError(f"run {run.run_id} was started with a different configuration (changed: "
                       f"{', '.join(changed)}); start a new run instead of resuming")


def resumed_metric_lines(run: RunStore, step: int) -> list[str]:
    """metrics.jsonl lines up to the checkpoint: the steps after it are trained (and logged) again."""
    if not run.dir.exists(METRICS):
        return []
    lines = [ln for ln in run.dir.read_text(METRICS).splitlines() if ln.strip()]
    try:
        return [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
    except (ValueError, AttributeError):
        raise RunError(f"{run.dir.uri}/{METRICS} is corrupt (a line that is not a JSON object)") from None


def training_job_ref() -> TrainingJobRef | None:
    name = os.environ.get("TUNEWRIGHT_TRAININGJOB")
    if not name:
        return None
    return TrainingJobRef(namespace=os.environ.get("TUNEWRIGHT_NAMESPACE", "default"), name=name,
                          uid=os.environ.get("TUNEWRIGHT_TRAININGJOB_UID"))


def prometheus_for(config: TrainingConfig, run_id: str, port: int | None) -> Any:
    if not port:
        return None
    from tunewright.training.prometheus import TrainerMetrics

    labels = {"trainingjob": os.environ.get("TUNEWRIGHT_TRAININGJOB", run_id),
              "namespace": os.environ.get("TUNEWRIGHT_NAMESPACE", ""), "method": config.method}
    try:
        return TrainerMetrics(port, labels)
    except OSError as err:  # never fail training because the metrics port is taken
        log.warning("metrics endpoint not started on port %s: %s", port, err)
        return None


@contextlib.contextmanager
def sigterm_ignored() -> Iterator[None]:
    """SIGTERM does nothing during the block: for the last cleanup of a run that is already failing, which
    torchrun (stopping the other ranks once one has exited, e.g. with the same refusal) or the kubelet must
    not cut short; the process exits right after it anyway. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class Run:
    """A training run bound to a storage root and a run id."""

    def __init__(self, config: TrainingConfig, root: Storage, run_id: str | None = None,
                 resume: str | None = None, metrics_port: int | None = None, display: bool = True):
        self.config = config
        self.root = root
        self.name = config.adapter_name()
        self.run = RunStore(root, resolve_run_id(root, self.name, run_id, resume))
        self.resume = resume
        self.metrics_port = metrics_port if is_main() else None  # only rank 0 has the (averaged) values
        self.display = TerminalDisplay(enabled=display and is_main())
        self.outage = Outage(root.uri)  # one per process: its writers share what they see of the store
        # Held by the run's one writer, global rank 0, while it trains and publishes (see tunewright.lease).
        self.lease = RunLease(self.run.dir, self.run.run_id, self.outage) if is_main() else None
        self.checkpoints = CheckpointStore(self.run.checkpoints, keep_last=config.checkpointing.keep_last,
                                           outage=self.outage, fence=self._fence)
        self.committed: dict[int, Any] = {}  # checkpoints committed by this process, retention's victims too
        self._logger: RunLogCallback | None = None  # progress.json's writer once training is set up
        self._grace_spent = False  # SIGTERM's checkpoint missed the grace period: exit without waiting
        self._started = False  # past every refusal: the run is this attempt's to mark failed

    def execute(self) -> Outcome:
        """Everything that can be checked without the model is checked before anything is written: the
        dataset (digest), the method/kind match, the registry, the run's lease, the configuration of a
        resumed run and the checkpoint to resume from; a refused run leaves storage as it was (the lease,
        taken before the run is read, is put back: RunLease.withdraw)."""
        done = self.run.read_result()
        if done is not None:
            check_config_matches(self.run, self.config, complete=True)
            self.display.console.print(f"run {self.run.run_id} already complete: {done.adapter_uri}")
            return Outcome(self.run.run_id, done, self.run.read_report() or {})
        dataset = resolve_dataset(self.config, self.root)
        objective = objective_for(self.config.method)
        if dataset.meta.kind not in objective.kinds:
            raise DataError(f"method {self.config.method} needs a dataset of kind {' or '.join(objective.kinds)}; "
                            f"dataset {dataset.meta.id!r} is {dataset.meta.kind}")
        Registry(self.root).check()
        on_rank_0_first(self._take_lease)
        work = Path(tempfile.mkdtemp(prefix=f"tunewright-{self.run.run_id}-"))
        try:
            start = self._resume_point()
            check_config_matches(self.run, self.config)
            return self._train(work, dataset, objective, start)
        except TrainingInterrupted:
            raise
        except BaseException as err:
            if self._started:
                late = self._grace_spent  # SIGTERM's grace period is nearly over: no more waiting for uploads
                self._finish_commits(0.0 if late else FAILED_WAIT_SECONDS)
                self._mark_failed(err, GRACE_MARGIN / 2 if late else FAILED_WAIT_SECONDS)
            raise
        finally:
            if self.lease and self._started:
                self.lease.release()
            elif self.lease:  # refused after taking the lease: it is put back as it was
                with sigterm_ignored():
                    self.lease.withdraw()
            shutil.rmtree(work, ignore_errors=True)

    def _take_lease(self) -> None:
        """Before anything of the run is read (its checkpoints, config.json), on rank 0 (the other ranks wait
        for the outcome: on_rank_0_first). A run being written by another trainer is refused here, before a
        read could fail on a checkpoint that the other's retention is deleting. A complete run is never
        written again, so execute() reads its result.json before this."""
        if self.lease:
            self.lease.acquire()
            self.lease.keep()

    def _finish_commits(self, timeout: float) -> None:
        """A failing run lets the checkpoint it is uploading commit (for `timeout` seconds), so that a retry
        resumes from it; its files are in `work`, which is removed next."""
        try:
            if not self.checkpoints.flush(timeout=timeout):
                log.warning("run %s: a checkpoint was still uploading after %.0f s; it is abandoned (uncommitted)",
                            self.run.run_id, timeout)
        except (Exception, KeyboardInterrupt) as why:  # its failure was logged where it happened
            log.debug("checkpoint upload failed: %s", why)

    def _mark_failed(self, err: BaseException, timeout: float) -> None:
        """progress.json of a run that ends other than by success or a committed SIGTERM checkpoint says
        `failed` and why (the CLI's error line), so that nothing polling it sees `running` forever. Only once
        the attempt has started (a refused start or resume changes nothing stored) and best effort: when the
        store is what failed, this cannot be written either. A run taken over by another trainer (LeaseLost)
        is that trainer's to write."""
        if not (is_main() and self._started) or isinstance(err, LeaseLost):
            return
        plain = "interrupted (SIGINT)" if isinstance(err, KeyboardInterrupt) else type(err).__name__
        reason = " ".join((str(err) or plain).split())  # a SIGTERM outside training says so (cli.common)
        logger = self._logger
        try:
            if logger is not None:
                logger.progress.state, logger.progress.message = "failed", reason
                logger.progress.updated = now_iso()
                logger.flush()
                logger.writer.drain(timeout=timeout)
            else:
                progress = self.run.read_progress() or Progress()
                progress.state, progress.message, progress.updated = "failed", reason, now_iso()
                self.run.write_progress(progress)
        except (Exception, KeyboardInterrupt) as why:
            log.warning("could not mark run %s failed in %s: %s", self.run.run_id, PROGRESS, why)

    def _fence(self) -> None:
        """Before a checkpoint commit or the publication: LeaseLost if another trainer took the run over."""
        if self.lease:
            self.lease.fence()

    def _resume_point(self) -> CheckpointInfo | None:
        """The checkpoint to continue from: none for a new run; with `auto` the latest if any; with `latest`
        or a name it must be committed. With `auto` or `latest`, checkpoints that exist but cannot be loaded
        (damaged: see checkpoints.py) refuse the run when no other is usable, and are named in one warning
        when an older one is resumed instead: a run never starts over silently."""
        if not self.resume:
            return None
        start = self.checkpoints.resolve("latest" if self.resume == "auto" else self.resume)
        if self.resume in ("auto", "latest"):
            damaged = {name: why for name, why in self.checkpoints.damaged().items()
                       if start is None or int(name.split("-")[1]) > start.step}
            reasons = "; ".join(f"{name}: {why}" for name, why in damaged.items())
            if damaged and start is None:
                raise RunError(f"run {self.run.run_id} has checkpoints but none can be resumed from ({reasons}); "
                               "repair them, or start a new run (they are never deleted automatically)")
            if damaged and start is not None:
                log.warning("resuming run %s from the older %s: %s", self.run.run_id, start.name, reasons)
        if start is None and self.resume == "latest":
            raise RunError(f"run {self.run.run_id} has no committed checkpoint to resume from; start it over with "
                           "--resume auto, or a new run without --resume")
        return start

    def _train(self, work: Path, dataset: Dataset, objective: Any, start: CheckpointInfo | None) -> Outcome:
        config = self.config
        model, processor, model_type = load_base(config.base_model, config.base_model_revision)
        family = family_for(model_type, processor, config, dataset, model)
        train_rows, val_rows = split_by_prompt(dataset.rows, config.data.validation_fraction)
        train_ex = objective.examples(train_rows, family, config)
        val_ex = objective.examples(val_rows, family, config) if val_rows else []
        if not train_ex:
            raise DataError(f"dataset {dataset.meta.id!r} leaves no training examples for {config.method}")
        set_seed(config.training.seed)  # LoRA's initialisation draws from the global RNG
        model = with_lora(model, config, family)  # may refuse lora.targetModules

        resume_dir = self.checkpoints.fetch(start.name, work / "resume" / start.name) if start else None
        hf_dir = work / "hf"
        args = training_arguments(config, hf_dir, has_eval=bool(val_ex))
        samples_per_step = config.training.batch_size * config.training.gradient_accumulation_steps * args.world_size
        if resume_dir:
            check_resume_world(resume_dir, args.world_size, samples_per_step // args.world_size)
        # The last refusal is behind: from here on this attempt owns the run (a failure marks it failed).
        record_config(self.run, config)
        self._started = True
        log.info("%s", describe_batch(args))
        trainer = ObjectiveTrainer(model=model, args=args, train_dataset=ExampleDataset(train_ex),
                                   eval_dataset=ExampleDataset(val_ex) if val_ex else None,
                                   objective=objective, family=family)
        trainer.remove_callback(PrinterCallback)
        sigterm = sigterm_callback()
        logger = self._logger = RunLogCallback(self.run, samples_per_step, trainer, self.display,
                                prometheus_for(config, self.run.run_id, self.metrics_port),
                                resumed_metric_lines(self.run, start.step) if start else [],
                                flush_seconds=0.0 if self.root.local_path() else 5.0, outage=self.outage,
                                fence=self.lease.confirm if self.lease else None)
        if logger.prometheus is not None:
            logger.prometheus.watch_storage(self.outage)
        self._wire_commits(logger, hf_dir)
        commit = CommitCheckpointCallback(self.checkpoints, hf_dir)
        schedule = EpochEndCallback(bool(val_ex), config.checkpointing.every_steps)
        for cb in (CheckpointRanks(), schedule, commit, logger, sigterm):
            trainer.add_callback(cb)
        if self.lease:
            trainer.add_callback(LeaseCallback(self.lease.check))
        early = None
        if config.early_stopping and val_ex:
            early = EarlyStoppingCallback(config.early_stopping.patience, config.early_stopping.min_delta)
            trainer.add_callback(early)

        objective.prepare(trainer, [train_ex, val_ex], family, run_dir=self.run.dir)
        before = initial_eval_loss(trainer) if start is None and is_main() else None
        began = time.monotonic()
        finished = resume_dir is not None and _finished(resume_dir)
        try:
            if finished:  # killed after its last checkpoint, or its publication failed: only publish
                assert resume_dir is not None
                log.info("run %s: %s is the final step; publishing without training", self.run.run_id, start.name)
                self._restore_final(trainer, resume_dir)
            else:
                trainer.train(resume_from_checkpoint=str(resume_dir) if resume_dir else None)
        finally:
            self.display.stop()
            sigterm.restore()
        try:
            if sigterm.requested:
                self._commit_within_grace(sigterm.at, trainer.state.global_step)
            self.checkpoints.flush()
        except CheckpointError:
            if self.lease:
                self.lease.check()  # the cause, when another trainer has taken the run over
            raise
        seconds = time.monotonic() - began
        if sigterm.requested:
            if is_main():
                logger.progress.state = "interrupted"
                logger.drain()
            raise TrainingInterrupted(f"stopped by SIGTERM at step {trainer.state.global_step}; checkpoint committed")
        if not is_main():
            return Outcome(self.run.run_id, None, {})

        best = self.checkpoints.best()
        self._load_best(trainer, best, work)
        listened = listen(trainer.model, processor, family.name, val_rows, config.training.seed, work / ADAPTER)
        stopped_early = bool(early and trainer.state.global_step < trainer.state.max_steps)
        report = build_report(
            state=trainer.state, run_id=self.run.run_id, config=config.to_dict(),
            dataset={"id": dataset.meta.id, "uri": dataset.dir.uri, "digest": dataset.meta.digest,
                     "kind": dataset.meta.kind, "modality": dataset.meta.modality},
            base_model={"ref": config.base_model, "revision": config.base_model_revision,
                        "commit": getattr(model.config, "_commit_hash", None), "family": family.name},
            counts={"trainRows": len(train_rows), "validationRows": len(val_rows),
                    "trainExamples": len(train_ex), "validationExamples": len(val_ex)},
            initial_eval_loss=before, best=best, stopped_early=stopped_early, training_seconds=seconds,
            samples_per_step=samples_per_step, resumed_from=start.name if start else None,
            history=[json.loads(line) for line in logger.lines], checkpoints=self._checkpoint_list(),
        ) | {"worldSize": args.world_size, "globalBatchSize": samples_per_step, "listen": listened}
        result = self._publish(trainer.model, report, dataset, work)
        logger.progress.state = "completed"
        logger.drain()
        print_summary(report, result.adapter_uri, result.report_page_uri, self.display.console)
        return Outcome(self.run.run_id, result, report, trainer.model, processor)

    def _commit_within_grace(self, signalled: float | None, step: int) -> None:
        """After SIGTERM, wait for the checkpoint only as long as the pod's grace period allows
        (TUNEWRIGHT_TERMINATION_GRACE_SECONDS, when set), so that the exit says whether it was committed
        rather than the kubelet's SIGKILL cutting it short unsaid."""
        grace = os.environ.get(GRACE_ENV)
        if not grace:
            return
        try:
            seconds = float(grace)
        except ValueError:
            raise RunError(f"{GRACE_ENV} = {grace!r}: must be a number of seconds") from None
        signalled = signalled or time.monotonic()
        if not self.checkpoints.flush(timeout=max(signalled + seconds - GRACE_MARGIN - time.monotonic(), 0.0)):
            self._grace_spent = True
            raise RunError(f"stopped by SIGTERM at step {step}, but its checkpoint could not be committed within "
                           f"the {seconds:.0f} s grace period (still uploading {time.monotonic() - signalled:.0f} s "
                           "after SIGTERM); the next attempt resumes from the last committed checkpoint")

    @staticmethod
    def _restore_final(trainer: ObjectiveTrainer, resume_dir: Path) -> None:
        """The trainer as it was at the end of training: its state and the final checkpoint's weights."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        from transformers import TrainerState

        trainer.state = TrainerState.load_from_json(str(resume_dir / TRAINER_STATE))
        set_peft_model_state_dict(trainer.model, load_file(str(resume_dir / "adapter_model.safetensors")))

    def _wire_commits(self, logger: RunLogCallback, hf_dir: Path) -> None:
        best = [self.checkpoints.best()]  # retention never deletes the best, so a running minimum is exact

        def committed(info: Any, upload_seconds: float) -> None:
            self.committed[info.step] = info
            if info.metric is not None and (best[0] is None or best[0].metric is None or info.metric < best[0].metric):
                best[0] = info
            logger.checkpoint_committed(info.name, best[0].name if best[0] else None)
            if logger.prometheus is not None:
                logger.prometheus.checkpoint_committed(upload_seconds)
            shutil.rmtree(hf_dir / info.name, ignore_errors=True)  # the local staging copy is no longer needed

        self.checkpoints.on_commit.append(committed)

    def _checkpoint_list(self) -> list[dict[str, Any]]:
        """Every checkpoint this run is known to have committed: the ones retention kept (earlier attempts'
        included) and the ones this process committed."""
        infos = {c.step: c for c in self.checkpoints.committed()} | self.committed
        return [{"name": c.name, "step": c.step, "evalLoss": c.metric} for _, c in sorted(infos.items())]

    def _load_best(self, trainer: ObjectiveTrainer, best: Any, work: Path) -> None:
        """The final adapter is the best checkpoint's weights (by validation loss) when it is not the last."""
        if best is None or best.step == trainer.state.global_step:
            return
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        local = self.checkpoints.fetch(best.name, work / "best" / best.name)
        set_peft_model_state_dict(trainer.model, load_file(str(local / "adapter_model.safetensors")))

    def _publish(self, model: Any, report: dict[str, Any], dataset: Dataset, work: Path) -> RunResult:
        """Adapter and report into the run, then the registry, then result.json (the run's commit).
        A version taken by a concurrent run of the same adapter name moves this one to the next version.
        Every request is retried while the store is unreachable, up to the outage tolerance (outages.py)."""
        adapter_dir = work / ADAPTER
        model.save_pretrained(str(adapter_dir))
        root = RetryingStorage(self.root, self.outage)  # a storage outage now must not cost the trained run
        run_dir = root.child("runs", self.run.run_id)
        registry = Registry(root)
        from tunewright.reporting.page import render  # matplotlib: imported by the runs that publish, at the end

        existing = next((r for r in registry.list() if r.run_id == self.run.run_id), None)
        for _ in range(PUBLISH_ATTEMPTS):
            self._fence()
            version = existing.version if existing else registry.next_version(self.name)
            versioned = {**report, "adapter": {"name": self.name, "version": version}}
            text = json.dumps(versioned, indent=2, sort_keys=True, allow_nan=True)
            page = render(versioned, lambda name: (adapter_dir / name).read_bytes())
            (adapter_dir / REPORT).write_text(text)
            (adapter_dir / REPORT_PAGE).write_text(page)
            run_dir.upload_dir(adapter_dir, ADAPTER)
            run_dir.write_text(REPORT, text)
            run_dir.write_text(REPORT_PAGE, page)
            self._fence()
            try:
                record = existing or registry.register(self._record(version, versioned, dataset),
                                                       local_dir=adapter_dir)
                break
            except VersionTaken as err:
                log.warning("%s; registering as the next version", err)
        else:
            raise RunError(f"adapter {self.name}: no free registry version after {PUBLISH_ATTEMPTS} attempts")
        result = RunResult(adapter_name=record.name, adapter_version=record.version, adapter_uri=record.uri,
                           report_uri=f"{record.uri}/{REPORT}", report_page_uri=f"{record.uri}/{REPORT_PAGE}")
        self._fence()
        run_dir.write_text(RESULT, result.to_json())
        return result

    def _record(self, version: int, report: dict[str, Any], dataset: Dataset) -> AdapterRecord:
        return AdapterRecord(
            name=self.name, version=version, base_model=self.config.base_model,
            base_model_revision=self.config.base_model_revision, method=self.config.method, uri="",
            dataset=DatasetProvenance(id=dataset.meta.id, uri=dataset.dir.uri, digest=dataset.meta.digest,
                                      kind=dataset.meta.kind),
            run_id=self.run.run_id, training_job=training_job_ref(), config=self.config.to_dict(),
            report=ReportSummary(final_loss=report["finalTrainLoss"], best_eval_loss=report["bestEvalLoss"],
                                 training_seconds=report["trainingSeconds"], epochs=report["epochs"],
                                 steps=report["steps"], stopped_early=report["stoppedEarly"],
                                 html_uri=f"{Registry(self.root).version_dir(self.name, version).uri}/{REPORT_PAGE}"),
        )
