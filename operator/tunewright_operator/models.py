"""The custom resources' specs and statuses as pydantic models: the CRD schemas are generated from these.

TrainingJob spec = the trainer's TrainingConfig (one source of truth) + what only the operator needs.
Adapter spec = the registry's AdapterRecord. Dataset spec = a dataset directory's URI; its
status mirrors the directory's meta.json.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from tunewright.config import DatasetRef, Spec, TrainingConfig
from tunewright.ids import DNS1123_PATTERN
from tunewright.registry import AdapterRecord

GROUP = "tunewright.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

Phase = Literal["Pending", "Queued", "Running", "Succeeded", "Failed"]
TERMINAL_PHASES = ("Succeeded", "Failed")


class StorageRef(Spec):
    """Where datasets, runs and the adapter registry live."""

    uri: str | None = Field(None, pattern=r"^(file|s3)://.+", description="Storage root (s3://bucket/prefix "
                            "or file://path); default: the operator's --storage.")
    secret_name: str | None = Field(None, pattern=DNS1123_PATTERN, max_length=253, description="Secret in the "
                                    "job's namespace with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally "
                                    "AWS_ENDPOINT_URL, AWS_REGION; passed to the trainer as environment variables. "
                                    "Credentials are only ever given by Secret reference.")


class TrainingJobSpec(TrainingConfig):
    """A training run on the cluster: the training configuration plus scheduling and storage."""

    dataset: DatasetRef = Field(description="The dataset: `id` (a Dataset resource of that name, or "
                                "`<storage>/datasets/<id>`) or `uri`.")
    image: str | None = Field(None, min_length=1, description="Trainer image; default: the operator's --image.")
    storage: StorageRef = Field(default_factory=StorageRef, description=StorageRef.__doc__)
    retries: int = Field(3, ge=0, le=100, description="Failed attempts retried (each resumes from the latest "
                         "checkpoint) before the job fails.")
    suspend: bool = Field(False, description="true stops the pod (the trainer checkpoints on SIGTERM) and keeps "
                          "the job queued; false resumes it.")
    priority: int = Field(0, ge=-1000, le=1000, description="Queue order: higher first, then creation time.")

    # What may change after creation (the CRD refuses edits of anything else): the trainer's config is written
    # once, at the first start, so every retry resumes the same run.
    MUTABLE: ClassVar[tuple[str, ...]] = ("suspend", "priority", "retries")


class Record(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(Record):
    """As the Kubernetes API conventions have it (metav1.Condition): one per type, reason required."""

    type: str = Field(description="Admitted, Running, Suspended, Succeeded, Failed, Synced, PodFailed, "
                      "PreviousAttemptGone.")
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(min_length=1, description="CamelCase reason, e.g. SlotAssigned, ErrImagePull, Evicted.")
    message: str = Field("", description="What happened, for a person.")
    last_transition_time: str = Field(description="When status last changed.")
    observed_generation: int | None = Field(None, description="metadata.generation the condition was set for.")


class Metrics(Record):
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None


class AdapterRef(Record):
    name: str = Field(description="Adapter resource name, `<adapter>-v<version>`.")
    adapter: str | None = Field(None, description="Adapter name in the registry.")
    version: int | None = None


class TrainingJobStatus(Record):
    """Written by the operator only."""

    phase: Phase | None = None
    message: str | None = None
    conditions: list[Condition] | None = None
    observed_generation: int | None = None
    attempts: int | None = Field(None, description="Pods started so far (the current pod is `<name>-a<attempts>`).")
    failures: int | None = Field(None, description="Failed attempts, counted against spec.retries.")
    pod_name: str | None = None
    terminating: list[str] | None = Field(None, description="Pods of an earlier attempt still terminating (the "
                                          "trainer checkpoints on SIGTERM); the next attempt starts when they "
                                          "are gone.")
    run_id: str | None = Field(None, description="The run's id in storage: runs/<runId>/.")
    start_time: str | None = None
    completion_time: str | None = None
    epoch: float | None = None
    step: int | None = None
    total_steps: int | None = None
    progress: str | None = Field(None, description="step/totalSteps, for `kubectl get`.")
    metrics: Metrics | None = None
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None
    adapter_ref: AdapterRef | None = None


class AdapterSpec(AdapterRecord):
    """A trained adapter: the registry record (PEFT directory URI, provenance, configuration, report)."""


class AdapterStatus(Record):
    phase: Literal["Ready"] | None = None
    message: str | None = None


class DatasetSpec(Spec):
    """A stored dataset that TrainingJobs can name by id (the resource's name)."""

    uri: str = Field(pattern=r"^(file|s3)://.+", description="The dataset directory (holds meta.json).")
    secret_name: str | None = Field(None, pattern=DNS1123_PATTERN, max_length=253,
                                    description="Secret with the S3 credentials to read it (as for TrainingJobs).")


class DatasetStatus(Record):
    """Read by the operator from the dataset's meta.json."""

    phase: Literal["Ready", "Invalid"] | None = None
    message: str | None = None
    kind: str | None = None
    modality: str | None = None
    samples: int | None = None
    digest: str | None = None
    created: str | None = None
