"""The training configuration: one model for the CLI's config file, the TrainingJob spec and the trainer.

Keys are camelCase (Kubernetes style); Python code uses snake_case attributes. Every field carries a
description, which also becomes the CRD's documentation (`kubectl explain trainingjob.spec`).
The operator imports this module, so it must never import torch.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from tunewright.documents import DocumentError, Lines, decode, is_yaml_name, parse_json_lines, parse_yaml_lines
from tunewright.ids import DNS1123_PATTERN

Method = Literal["sft", "dpo", "ranking"]


class Spec(BaseModel):
    """Base for every configuration block: camelCase keys, unknown keys refused, no type coercion (`true` is
    not 1, `"5"` is not 5, integers are not floats' truncations) and only finite numbers."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", validate_assignment=True,
        strict=True, allow_inf_nan=False,
    )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class DatasetRef(Spec):
    """Which dataset to train on: an id in the storage root's dataset store, or a URI of a stored dataset."""

    id: str | None = Field(None, pattern=DNS1123_PATTERN, max_length=63,
                           description="Dataset id (DNS-1123 label) under `<storage>/datasets/`.")
    uri: str | None = Field(None, pattern=r"^(file|s3)://.+",
                            description="URI of a dataset directory (file:// or s3://) holding meta.json.")

    @model_validator(mode="after")
    def _exactly_one(self) -> DatasetRef:
        if (self.id is None) == (self.uri is None):
            raise ValueError("set exactly one of dataset.id or dataset.uri")
        return self


class TrainingParams(Spec):
    """Optimisation hyperparameters."""

    learning_rate: float = Field(2e-4, gt=0, le=1, description="Peak learning rate.")
    epochs: int = Field(3, ge=1, le=10_000, description="Passes over the training split.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps "
                                  "(overrides epochs when set).")
    batch_size: int = Field(8, ge=1, le=65_536, description="Per-device batch size (samples).")
    gradient_accumulation_steps: int = Field(1, ge=1, le=4096,
                                             description="Micro-batches accumulated per optimizer step.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps spent warming up.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial"] = Field(
        "linear", description="Learning-rate schedule (transformers' names).")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, le=1e6, description="Gradient clipping norm.")
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seed for data order, initialisation, dropout.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Compute precision. bf16 autocasts on CPUs that support it and on GPUs.")
    log_every_steps: int = Field(10, ge=1, description="Log loss, learning rate and grad norm every N steps "
                                 "and at the last step.")


class DataParams(Spec):
    """How samples become training examples."""

    min_rating: float = Field(4.0, ge=-1e9, le=1e9,
                              description="SFT keeps rated samples with rating >= minRating.")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="Fraction of prompts held out for "
                                       "validation (split by prompt, deterministic).")
    max_length: int = Field(512, ge=8, le=1_048_576, description="Maximum tokens (prompt + completion); "
                            "for MusicGen, codec frames per clip.")


class LoraParams(Spec):
    """The LoRA adapter (PEFT)."""

    rank: int = Field(16, ge=1, le=1024, description="LoRA rank r.")
    alpha: float = Field(32.0, gt=0, le=65_536, description="LoRA alpha (scaling = alpha / rank).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[str] | None = Field(
        None, min_length=1, description="Module names to adapt; default: the attention projections "
        "(MusicGen: the decoder's self/cross-attention projections and its per-codebook output heads).")
    modules_to_save: list[str] | None = Field(
        None, description="Modules trained in full and saved with the adapter (e.g. lm_head).")


class CheckpointingParams(Spec):
    """Checkpoints are written at each epoch end, at the last step and every `everySteps` steps of an epoch."""

    every_steps: int | None = Field(None, ge=1, description="Checkpoint (and evaluate) every N steps, counted from "
                                    "the start of each epoch; epoch ends and the last step always checkpoint.")
    keep_last: int = Field(3, ge=1, le=1000, description="Keep the N most recent checkpoints; "
                           "the best one by validation loss is always kept as well.")


class EarlyStoppingParams(Spec):
    """Stop when the validation metric has not improved for `patience` evaluations."""

    patience: int = Field(3, ge=1, le=10_000, description="Evaluations without improvement before stopping.")
    min_delta: float = Field(0.0, ge=0, description="Smallest decrease that counts as an improvement.")
    metric: Literal["eval_loss"] = Field("eval_loss", description="Validation metric (lower is better).")


class DpoParams(Spec):
    """Direct Preference Optimization."""

    beta: float = Field(0.1, gt=0, le=100, description="Strength of the KL constraint to the reference.")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="DPO loss variant.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="Conservative DPO label smoothing.")
    min_rating_gap: float = Field(1.0, gt=0, description="Rated datasets: pair samples of one prompt "
                                  "whose ratings differ by at least this much.")


class RankingParams(Spec):
    """Ranking losses over lists of completions ordered best to worst."""

    loss: Literal["margin", "listwise"] = Field("margin", description="margin: pairwise margin ranking; "
                                                "listwise: Plackett-Luce (ListMLE).")
    margin: float = Field(0.5, ge=0, le=1e3, description="Margin for the pairwise loss. With 0 the loss has no "
                          "gradient while all rewards are equal (at the start), unless sftWeight > 0.")
    beta: float = Field(0.1, gt=0, le=100, description="Implicit reward scale β·(log π − log π_ref).")
    sft_weight: float = Field(0.0, ge=0, le=1e3, description="Weight of an SFT term on the best sample.")


class Toleration(Spec):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class ResourceParams(Spec):
    """Compute for each trainer pod."""

    gpus: int = Field(0, ge=0, le=64, description="GPUs per pod (nvidia.com/gpu); >1 runs one process per GPU.")
    nodes: int = Field(1, ge=1, le=1024, description="Pods (nodes) for multi-node training.")
    cpu: str | None = Field(None, pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request, e.g. '4'.")
    memory: str | None = Field(None, pattern=r"^[0-9]+(\.[0-9]+)?([EPTGMK]i?)?$",
                               description="Memory request and limit, e.g. '32Gi'.")
    node_selector: dict[str, str] | None = Field(None, description="Node labels the pod must match.")
    tolerations: list[Toleration] | None = Field(None, description="Tolerations (e.g. for GPU taints).")
    priority_class_name: str | None = Field(
        None, description="PriorityClass of the trainer pods (the queue is ordered by spec.priority).")


class TrainingConfig(Spec):
    """Everything that decides what gets trained and how."""

    name: str | None = Field(None, pattern=DNS1123_PATTERN, max_length=63,
                             description="Adapter name in the registry; default '<dataset>-<method>'.")
    method: Method = Field("sft", description="sft, dpo or ranking.")
    base_model: str = Field("tiny-llama", min_length=1, description="Base model: a tiny preset name, a "
                            "Hugging Face id, a local directory or an s3:// URI.")
    base_model_revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dataset: DatasetRef | None = Field(None, description="The dataset (the CLI's --dataset sets dataset.id).")
    training: TrainingParams = Field(default_factory=TrainingParams, description=TrainingParams.__doc__)
    data: DataParams = Field(default_factory=DataParams, description=DataParams.__doc__)
    lora: LoraParams = Field(default_factory=LoraParams, description=LoraParams.__doc__)
    checkpointing: CheckpointingParams = Field(default_factory=CheckpointingParams,
                                               description=CheckpointingParams.__doc__)
    early_stopping: EarlyStoppingParams | None = Field(None, description="Unset: no early stopping. "
                                                       + (EarlyStoppingParams.__doc__ or ""))
    dpo: DpoParams = Field(default_factory=DpoParams, description=DpoParams.__doc__)
    ranking: RankingParams = Field(default_factory=RankingParams, description=RankingParams.__doc__)
    resources: ResourceParams = Field(default_factory=ResourceParams, description=ResourceParams.__doc__)

    def adapter_name(self) -> str:
        if self.name:
            return self.name
        ref = self.dataset.id if self.dataset and self.dataset.id else "adapter"
        return f"{ref}-{self.method}"[:63].rstrip("-")


class ConfigError(ValueError):
    """A configuration that failed validation; the message names every bad field, its value and the rule."""

    def __init__(self, problems: list[str], source: str = "config", whole: str | None = None):
        self.problems = problems
        super().__init__(whole or f"invalid {source}: " + "; ".join(problems))


_BOUND_TEXT = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
# pydantic's type errors in the words of the config file (YAML/JSON): booleans and strings are not numbers.
TYPE_RULES = {
    "int_type": "must be an integer (not a boolean, string or fraction)",
    "float_type": "must be a number (not a boolean or string)",
    "finite_number": "must be a finite number (not NaN or infinity)",
    "string_type": "must be a string (quote it)",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
}


def _field_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """The FieldInfo at a pydantic error location, or None (lists, dicts and unions are skipped)."""
    field = None
    for part in loc:
        if not isinstance(part, str) or model is None:
            return field if isinstance(part, int) else None
        field = next((f for n, f in model.model_fields.items() if part in (n, f.alias)), None)
        if field is None:
            return None
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type)]
        model = next((a for a in [ann, *args] if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return field


def allowed_range(field: Any) -> str | None:
    """'must be > 0 and <= 1' from a field's numeric constraints."""
    bounds = []
    for meta in getattr(field, "metadata", []):
        for attr, text in _BOUND_TEXT.items():
            value = getattr(meta, attr, None)
            if value is not None:
                bounds.append(f"{text} {value:g}" if isinstance(value, float) else f"{text} {value}")
    return " and ".join(bounds) or None


def explain(error: ValidationError, model: type[BaseModel], at: Lines | None = None) -> list[str]:
    """One line per problem: `training.learningRate = 0: must be > 0 and <= 1`, prefixed with `line N: `
    where `at` (from parse_yaml_lines) knows the line of the field or of its nearest enclosing key (`--set `
    where that is 0: the value came from the command line)."""
    lines = []
    for err in error.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        line = next((at[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in at), None) if at else None
        if line is not None:
            where = f"line {line}: {where}" if line else f"--set {where}"  # 0: set on the command line
        if err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown field")
            continue
        if err["type"] == "missing":
            lines.append(f"{where}: required field is missing")
            continue
        rule = TYPE_RULES.get(err["type"]) or err["msg"].removeprefix("Value error, ")
        field = _field_at(model, loc)
        bounds = allowed_range(field) if field is not None else None
        if bounds and err["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            rule = f"must be {bounds}"
        shown = json.dumps(err["input"], default=str) if "input" in err else "?"
        lines.append(f"{where} = {shown}: {rule}")
    return lines


def validate(data: dict[str, Any], model: type[Spec] = TrainingConfig, source: str = "config",
             at: Lines | None = None) -> Any:
    """Validate a camelCase mapping into `model`, raising ConfigError with readable messages."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(explain(err, model, at), source) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainingConfig:
    """Read a YAML (.yaml/.yml, any case) or JSON config file, apply dotted camelCase overrides, validate;
    problems name the line of their field in the file (or the --set flag)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError([], str(path), f"cannot read {path}: {err.strerror}") from None
    if not raw.strip():
        raise ConfigError([], str(path), f"{path} is empty; a config is a mapping such as 'method: sft'")
    at: Lines = {}
    try:
        parse = parse_yaml_lines if is_yaml_name(path.name) else parse_json_lines
        data, at = parse(decode(raw, str(path)), str(path))
    except DocumentError as err:
        raise ConfigError([str(err)], str(path), str(err)) from None
    if data is None:
        raise ConfigError([], str(path), f"{path} is empty; a config is a mapping such as 'method: sft'")
    if not isinstance(data, dict):
        raise ConfigError(["the top level must be a mapping"], str(path))
    overridden = {tuple(key.split(".")) for key in overrides or {}}
    at = {path: line for path, line in at.items() if not any(path[: len(o)] == o for o in overridden)}
    at.update(dict.fromkeys(overridden, 0))
    return validate(apply_overrides(data, overrides or {}), TrainingConfig, str(path), at)


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set `{"training.learningRate": 1e-3}`-style dotted keys in a nested mapping (copy)."""
    data = copy.deepcopy(data)
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        if not all([*parents, leaf]):
            raise ConfigError([], "--set", f"--set {dotted}: empty key part; use dotted camelCase keys "
                              "such as training.learningRate")
        for depth, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                where = ".".join(parents[: depth + 1])
                raise ConfigError([], "--set", f"--set {dotted}: {where} is a {type(node).__name__}, not a "
                                  "mapping, so it has no field to set")
        node[leaf] = value
    return data
