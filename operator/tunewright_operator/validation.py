"""Defence in depth beyond the CRD schema: the full pydantic model, then what only the operator can check."""

from __future__ import annotations

import fnmatch
from typing import Any

from tunewright.config import ConfigError, TrainingConfig, validate
from tunewright.data.store import DatasetError, DatasetStore
from tunewright.storage import Storage
from tunewright_operator import datasets
from tunewright_operator.kube import DATASETS, Kube
from tunewright_operator.models import TrainingJobSpec
from tunewright_operator.settings import Settings

OPERATOR_FIELDS = set(TrainingJobSpec.model_fields) - set(TrainingConfig.model_fields)


class InvalidJob(ValueError):
    """A TrainingJob that can never run as written; the message says what to change, `reason` is the
    condition reason."""

    def __init__(self, message: str, reason: str = "InvalidSpec"):
        super().__init__(message)
        self.reason = reason


def check_image(spec: TrainingJobSpec, settings: Settings) -> None:
    """The trainer image is one the operator may run: a pattern of --allowed-images, or by default the
    operator's own --image only (so whoever may create a TrainingJob cannot run any image)."""
    image = spec.image or settings.image
    allowed = settings.allowed_images or (settings.image,)
    if not any(fnmatch.fnmatchcase(image, pattern) for pattern in allowed):
        raise InvalidJob(f"spec.image {image!r} is not allowed: allowed are {', '.join(allowed)} (the operator's "
                         "--allowed-images, chart value trainer.allowedImages)", "ImageNotAllowed")


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


def dataset_resource(kube: Kube, namespace: str, spec: TrainingJobSpec) -> dict[str, Any] | None:
    """The Dataset resource that spec.dataset.id names, if there is one (else the id is `<storage>/datasets/<id>`)."""
    return kube.get(DATASETS, namespace, spec.dataset.id) if spec.dataset.id else None


def dataset_secret(spec: TrainingJobSpec, dataset: dict[str, Any] | None) -> str | None:
    """The Secret with the credentials to read the dataset: the Dataset resource's own, else the job's."""
    own = ((dataset or {}).get("spec") or {}).get("secretName")
    return own or spec.storage.secret_name


def trainer_config(spec: TrainingJobSpec, dataset: dict[str, Any] | None) -> TrainingConfig:
    """The trainer's config file: the spec minus operator-only fields, with a Dataset resource's id resolved
    to its URI (the adapter name is pinned first, since its default derives from the dataset id)."""
    data = spec.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=OPERATOR_FIELDS)
    data["name"] = spec.adapter_name()
    if dataset is not None:
        data["dataset"] = {"uri": dataset["spec"]["uri"]}
    return TrainingConfig.model_validate(data)


def check_dataset(kube: Kube, namespace: str, config: TrainingConfig, root: Storage, secret: str | None) -> None:
    """The dataset exists (whether its kind suits the method is the trainer's call: it knows the objectives): an id
    under the job's storage root, or a URI read with `secret`'s credentials."""
    ref = config.dataset
    assert ref is not None
    if ref.id:
        try:
            DatasetStore(root).meta(ref.id)
        except DatasetError as err:
            raise InvalidJob(f"spec.dataset: {err}") from None
        return
    status = datasets.read_status(kube, namespace, ref.uri or "", secret)
    if status["phase"] != "Ready":
        raise InvalidJob(f"spec.dataset: {status['message']}")
