"""The few Kubernetes API calls the operator makes, through the official client.

Kopf runs the (sync) handlers in worker threads, so the blocking client is fine here. Creation is always
create-or-get: names are deterministic, so a repeated call after an operator restart finds the object the
previous run made instead of making a second one.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import kubernetes
from kubernetes.client import ApiException

from tunewright_operator.models import GROUP, VERSION

TRAININGJOBS = "trainingjobs"
ADAPTERS = "adapters"
DATASETS = "datasets"
# How long a Secret read is reused: a rotated or fixed Secret is seen within this time. (A Secret watch would need
# list/watch on every Secret of the namespace, which the chart deliberately does not grant.)
SECRET_SECONDS = 60.0


def load_config(connections: int) -> None:
    """The in-cluster or kubeconfig credentials, with `connections` pooled connections: one per thread that calls
    the API at once. With fewer (the client's default is 10), each surplus connection is closed after its request
    and the next one opens a new TLS connection (urllib3: "Connection pool is full, discarding connection"; the
    handshakes were ~2 % of the operator's CPU in a 300-job burst)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    config = kubernetes.client.Configuration.get_default_copy()
    config.connection_pool_maxsize = connections
    kubernetes.client.Configuration.set_default(config)


def _raw(response: Any) -> Any:
    """The JSON of a core API answer asked for with `_preload_content=False`. Reading it as JSON instead of the
    client's model objects (and back to dicts) saves ~5 ms of CPU per pod; a new ApiClient per conversion also
    built an SSL context each time (profile of a 100-job burst: ~15 % of the operator's CPU)."""
    return json.loads(response.data)


# The label a Secret needs before the operator reads it as S3 credentials or passes it to trainer pods: a
# TrainingJob may name any Secret of its namespace, and most are not meant for that.
SECRET_OPT_IN = "tunewright.dev/storage-credentials"


class SecretNotAllowed(RuntimeError):
    """A Secret a TrainingJob or Dataset names that has not opted in (SECRET_OPT_IN)."""


class OwnedByAnother(RuntimeError):
    """An object of the name we derive exists but belongs to another owner (an earlier TrainingJob of the same
    name whose objects the garbage collector has not removed yet)."""


def _check_owner(wanted: dict[str, Any], found: dict[str, Any]) -> None:
    uids = lambda obj: {r["uid"] for r in obj["metadata"].get("ownerReferences") or []}  # noqa: E731
    if not uids(wanted) <= uids(found):
        raise OwnedByAnother(f"{wanted['kind']} {wanted['metadata']['name']} belongs to another owner "
                             f"({', '.join(sorted(uids(found))) or 'none'}); waiting for it to be deleted")


class Kube:
    def __init__(self, client: kubernetes.client.ApiClient | None = None):
        client = client or kubernetes.client.ApiClient()
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self._written: dict[tuple[str, str, str], str] = {}  # (plural, namespace, name) -> resourceVersion
        self._writing: dict[tuple[str, str, str], threading.Event] = {}  # set once the latest write answered
        self._secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
        self._lock = threading.Lock()

    # --- custom resources ---

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list(self, plural: str, namespaces: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        if not namespaces:
            return self.custom.list_cluster_custom_object(GROUP, VERSION, plural)["items"]
        return [item for ns in namespaces
                for item in self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]]

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        key = (plural, namespace, name)
        done = threading.Event()
        with self._lock:
            self._writing[key] = done
        try:
            patched = self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name,
                                                                        {"status": status})
            with self._lock:
                self._written[key] = patched["metadata"]["resourceVersion"]
        finally:
            done.set()

    def wrote(self, plural: str, namespace: str, name: str, resource_version: str | None) -> bool:
        """Whether this version of the object is the one this process's latest status write made (its watch
        event then brings nothing new). The event can come before the write's answer: that is waited for."""
        key = (plural, namespace, name)
        with self._lock:
            writing = self._writing.get(key)
        if writing is not None:
            writing.wait(10)
        with self._lock:
            return resource_version is not None and self._written.get(key) == resource_version

    def forget(self, plural: str, namespace: str, name: str) -> None:
        with self._lock:
            self._written.pop((plural, namespace, name), None)
            self._writing.pop((plural, namespace, name), None)

    def ensure(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create a custom object, or return the existing one of that name."""
        try:
            return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
        except ApiException as err:
            if err.status != 409:
                raise
        existing = self.get(plural, namespace, body["metadata"]["name"])
        if existing is None:  # deleted in between: try once more
            return self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
        return existing

    # --- pods, services, config maps, secrets ---

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _raw(self.core.read_namespaced_pod(name, namespace, _preload_content=False))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list_pods(self, namespaces: tuple[str, ...], selector: str) -> list[dict[str, Any]]:
        if not namespaces:
            return _raw(self.core.list_pod_for_all_namespaces(label_selector=selector,
                                                              _preload_content=False))["items"]
        return [p for ns in namespaces for p in _raw(self.core.list_namespaced_pod(
            ns, label_selector=selector, _preload_content=False))["items"]]

    def ensure_pod(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return _raw(self.core.create_namespaced_pod(namespace, body, _preload_content=False))
        except ApiException as err:
            if err.status != 409:
                raise
        pod = self.get_pod(namespace, body["metadata"]["name"])
        return pod if pod is not None else \
            _raw(self.core.create_namespaced_pod(namespace, body, _preload_content=False))

    def delete_pod(self, namespace: str, name: str) -> None:
        try:
            self.core.delete_namespaced_pod(name, namespace)
        except ApiException as err:
            if err.status != 404:
                raise

    def ensure_service(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            self.core.create_namespaced_service(namespace, body)
        except ApiException as err:
            if err.status != 409:
                raise
            _check_owner(body, _raw(self.core.read_namespaced_service(body["metadata"]["name"], namespace,
                                                                   _preload_content=False)))

    def delete_service(self, namespace: str, name: str) -> None:
        try:
            self.core.delete_namespaced_service(name, namespace)
        except ApiException as err:
            if err.status != 404:
                raise

    def ensure_config_map(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            self.core.create_namespaced_config_map(namespace, body)
        except ApiException as err:
            if err.status != 409:
                raise
            _check_owner(body, _raw(self.core.read_namespaced_config_map(body["metadata"]["name"], namespace,
                                                                      _preload_content=False)))

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """The Secret's data, read at most once per SECRET_SECONDS per Secret (storage is opened on every poll of
        every running job); a missing or unreadable Secret is never cached."""
        now = time.monotonic()
        with self._lock:
            cached = self._secrets.get((namespace, name))
        if cached and now - cached[0] < SECRET_SECONDS:
            return cached[1]
        secret = self.core.read_namespaced_secret(name, namespace)
        if (secret.metadata.labels or {}).get(SECRET_OPT_IN) != "true":
            raise SecretNotAllowed(f'Secret "{name}" is not labelled {SECRET_OPT_IN}=true: only Secrets labelled '
                                   "so are read as storage credentials or given to trainer pods")
        data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
        data = {**data, **(secret.string_data or {})}
        with self._lock:
            self._secrets[namespace, name] = (now, data)
        return data
