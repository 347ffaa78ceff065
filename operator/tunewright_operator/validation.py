"""Defence in depth beyond the CRD schema: the full pydantic model, then what only the operator can check."""

from __future__ import annotations

from typing import Any

from tunewright.config import ConfigError, TrainingConfig, validate
from tunewright.data.store import DatasetError, DatasetStore, open_dataset
from tunewright.storage import Storage
from tunewright_operator.kube import DATASETS, Kube
from tunewright_operator.models import TrainingJobSpec

OPERATOR_FIELDS = set(TrainingJobSpec.model_fields) - set(TrainingConfig.model_fields)


class InvalidJob(ValueError):
    """A TrainingJob that can never run as written; the message says what to change."""


def parse_spec(raw: dict[str, Any]) -> TrainingJobSpec:
    try:
        return validate(raw or {}, TrainingJobSpec, "TrainingJob spec")
    except ConfigError as err:
        raise InvalidJob(str(err)) from None


def storage_uri(spec: TrainingJobSpec, default: str) -> str:
    uri = spec.storage.uri or default
    if not uri:
        raise InvalidJob("no storage: set spec.storage.uri (s3://bucket/prefix) or start the operator with "
                         "--storage")
    return uri


def trainer_config(kube: Kube, namespace: str, spec: TrainingJobSpec) -> TrainingConfig:
    """The trainer's config file: the spec minus operator-only fields, with a Dataset resource's id resolved
    to its URI (the adapter name is pinned first, since its default derives from the dataset id)."""
    data = spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=OPERATOR_FIELDS)
    data["name"] = spec.adapter_name()
    if spec.dataset.id:
        dataset = kube.get(DATASETS, namespace, spec.dataset.id)
        if dataset is not None:
            data["dataset"] = {"uri": dataset["spec"]["uri"]}
    return TrainingConfig.model_validate(data)


def check_dataset(config: TrainingConfig, root: Storage) -> None:
    """The dataset exists (whether its kind suits the method is the trainer's call: it knows the objectives)."""
    ref = config.dataset
    assert ref is not None
    try:
        DatasetStore(root).meta(ref.id) if ref.id else open_dataset(ref.uri or "")
    except DatasetError as err:
        raise InvalidJob(f"spec.dataset: {err}") from None
