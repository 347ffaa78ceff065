"""Operator test fixtures: the real operator (a subprocess, as in a pod) against the real API server,
authenticated as the chart's ServiceAccount with the chart's Role; a kubelet that runs pods as local processes;
and a storage root with a dataset."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml

from support.control_plane import ControlPlane
from support.helm import Helm
from support.k8s import wait_for
from support.kubelet import Kubelet
from tunewright.data import synthetic
from tunewright.data.store import DatasetStore
from tunewright.storage import Storage, open_storage

HERE = Path(__file__).parent
STANDIN = [sys.executable, str(HERE / "standin_trainer.py")]
GROUP, VERSION = "tunewright.dev", "v1alpha1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator:
    """`python -m tunewright_operator` in a subprocess, pointed at the API server by a kubeconfig."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, storage: str, *flags: str):
        self.kubeconfig, self.namespace, self.log_path = kubeconfig, namespace, log
        self.flags = ["--namespace", namespace, "--storage", storage, "--poll-seconds", "0.5", "--lease-seconds", "4",
                      *flags]
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = self.health_port = 0
        self.starts = 0

    def start(self) -> Operator:
        self.metrics_port, self.health_port = free_port(), free_port()
        self.starts += 1
        # No AWS_* from the test: storage credentials must come from the job's Secret.
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {"KUBECONFIG": str(self.kubeconfig)}
        with self.log_path.open("ab") as log:
            log.write(f"\n===== operator start {self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tunewright_operator", *self.flags, "--metrics-port", str(self.metrics_port),
                 "--health-port", str(self.health_port)], env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._healthy, 30, "the operator's /healthz")
        return self

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the operator exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def restart(self) -> None:
        self.stop(signal.SIGKILL)  # a crash, not a graceful shutdown
        self.start()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Cluster:
    """The test's side of the API (the official client), scoped to one namespace."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str):
        self.api, self.namespace = api, namespace
        self.core = kubernetes.client.CoreV1Api(api)
        self.custom = kubernetes.client.CustomObjectsApi(api)

    def create(self, plural: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        kind = {"trainingjobs": "TrainingJob", "datasets": "Dataset", "adapters": "Adapter"}[plural]
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, body)

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name)
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                return None
            raise

    def list(self, plural: str) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, plural)["items"]

    def patch_spec(self, plural: str, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name, {"spec": spec})

    def delete(self, plural: str, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, plural, name)

    def status(self, name: str) -> dict[str, Any]:
        return (self.get("trainingjobs", name) or {}).get("status") or {}

    def phase(self, name: str) -> str | None:
        return self.status(name).get("phase")

    def wait_phase(self, name: str, *phases: str, timeout: float = 60) -> dict[str, Any]:
        wait_for(lambda: self.phase(name) in phases, timeout, f"TrainingJob {name} in {'/'.join(phases)} "
                 f"(now {self.phase(name)}: {self.status(name).get('message')})")
        return self.status(name)

    def pods(self) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_pod(self.namespace).items
        return [self.api.sanitize_for_serialization(p) for p in items]

    def pod_names(self) -> list[str]:
        return sorted(p["metadata"]["name"] for p in self.pods())

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.core.list_namespaced_event(self.namespace).items
        return [self.api.sanitize_for_serialization(e) for e in items if e.involved_object.name == name]


class PodEvents:
    """The namespace's pod events in the order the API server sent them (a watch, as the operator sees them)."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str):
        self.events: list[tuple[str, str]] = []  # (ADDED/MODIFIED/DELETED, pod name)
        self._watch = kubernetes.watch.Watch()
        core = kubernetes.client.CoreV1Api(api)
        stream = self._watch.stream(core.list_namespaced_pod, namespace, deserialize=False)
        self._thread = threading.Thread(target=self._follow, args=(stream,), daemon=True)
        self._thread.start()

    def _follow(self, stream: Any) -> None:
        try:
            for event in stream:
                self.events.append((event["type"], event["object"]["metadata"]["name"]))
        except Exception as err:  # the emulator went away (end of the session), or the stream broke
            self.events.append(("ERROR", repr(err)))

    def first(self, type_: str, name: str) -> int:
        """Where the first such event is in the sequence (AssertionError if there is none)."""
        try:
            return self.events.index((type_, name))
        except ValueError:
            raise AssertionError(f"no {type_} event for pod {name}: {self.events}") from None

    def stop(self) -> None:
        self._watch.stop()


@pytest.fixture
def pod_events(api: kubernetes.client.ApiClient, namespace: str) -> Iterator[PodEvents]:
    events = PodEvents(api, namespace)
    yield events
    events.stop()


@pytest.fixture
def api(control_plane: ControlPlane) -> kubernetes.client.ApiClient:
    """The test's own client: cluster admin."""
    return control_plane.client()


def install_operator_account(control_plane: ControlPlane, helm: Helm, namespace: str, kubeconfig: Path) -> Path:
    """Install the chart's ServiceAccount, Role and RoleBinding for `namespace` (as `helm install` with
    watchNamespaces=[namespace] would) and write a kubeconfig with a token of that ServiceAccount (TokenRequest
    API): every call the operator makes that the chart does not grant is refused."""
    docs = helm.template({"watchNamespaces": [namespace]}, namespace=namespace)
    rbac = [d for d in docs if d["kind"] in ("ServiceAccount", "Role", "RoleBinding")]
    control_plane.kubectl("apply", "--server-side", "-f", "-", input="\n---\n".join(map(yaml.safe_dump, rbac)))
    (account,) = {d["subjects"][0]["name"] for d in rbac if d["kind"] == "RoleBinding"}
    token = kubernetes.client.CoreV1Api(control_plane.client()).create_namespaced_service_account_token(
        account, namespace, {"spec": {"expirationSeconds": 3600}}).status.token
    return control_plane.write_kubeconfig(kubeconfig, token, f"system:serviceaccount:{account}")


@pytest.fixture
def operator_kubeconfig(control_plane: ControlPlane, helm: Helm, namespace: str, tmp_path: Path) -> Path:
    return install_operator_account(control_plane, helm, namespace, tmp_path / "operator.kubeconfig")


@pytest.fixture
def k8s(api: kubernetes.client.ApiClient, namespace: str) -> Cluster:
    return Cluster(api, namespace)


@pytest.fixture
def store(tmp_path: Path) -> Storage:
    """A file:// storage root with the rated dataset `songs`."""
    root = open_storage(f"file://{tmp_path}/store")
    DatasetStore(root).import_file("songs", synthetic.write_jsonl(synthetic.rated_rows(), tmp_path / "songs.jsonl"),
                                   "rated")
    return root


@pytest.fixture
def kubelet_factory(api: kubernetes.client.ApiClient, namespace: str, tmp_path: Path
                    ) -> Iterator[Callable[..., Kubelet]]:
    made: list[Kubelet] = []

    def make(command: list[str] = STANDIN, node: dict[str, Any] | None = None, **env: str) -> Kubelet:
        kubelet = Kubelet(api, namespace, tmp_path / "node", {"tunewright-train": command}, extra_env=env,
                          **(node or {})).start()
        made.append(kubelet)
        return kubelet

    yield make
    for kubelet in made:
        kubelet.stop()


@pytest.fixture
def operator_factory(operator_kubeconfig: Path, namespace: str, tmp_path: Path, store: Storage,
                     request: pytest.FixtureRequest) -> Iterator[Callable[..., Operator]]:
    made: list[Operator] = []

    def make(*flags: str) -> Operator:
        op = Operator(operator_kubeconfig, namespace, tmp_path / "operator.log", store.uri, *flags)
        made.append(op.start())
        return op

    yield make
    for op in made:
        op.stop(signal.SIGKILL)  # nothing to finish gracefully in a test
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for op in made:
            print(f"--- operator log ---\n{op.log()[-8000:]}")
