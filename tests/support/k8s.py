"""A Kubernetes API for tests: kmock's KubernetesEmulator over HTTP, made a little more like a real API server.

kmock's emulator stores objects as plain JSON and merges patches. `Cluster` adds what the operator, Kopf, the
official client and kubectl rely on: uid, creationTimestamp, resourceVersion, generation and generateName on
creation; 201 Created; the status subresource written apart from the rest; label selectors and `kind` on lists;
the API's Status reasons (NotFound, AlreadyExists, Invalid); 422 when a JSON patch's `test` fails (Kopf's
resourceVersion precondition); `/api/v1/namespaces` (list and watch), which kmock cannot route; and garbage
collection of dependents whose owners are gone.

What it still lacks compared with a real cluster, and how the tests cover it: OpenAPI schema validation and
defaulting (test_operator_crds.py validates objects against the generated CRD schema), the OpenAPI document
(kubectl needs --validate=false), server-side table printing (no printer columns in `kubectl get`), admission
and RBAC (the chart's tests check the Role against the operator's calls), scheduling and the kubelet (the
`Kubelet` below runs pods as local processes), graceful pod deletion by grace period (the `Kubelet` models it
with a finalizer: a deleted pod it runs keeps its deletionTimestamp until the process has exited),
optimistic concurrency for merge patches, field selectors and watch resumption by resourceVersion.

Fixtures: `cluster` (one emulator per test session, in its own thread) and `namespace` (a fresh one per test).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import pytest
import yaml
from kmock._internal import rendering

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
KEEP_REQUESTS = 32


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition", interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _matches(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selectors (`a=b,c!=d,e,!f`): what the operator and tests use."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@attrs.define(kw_only=True)
class Cluster(kmock.KubernetesEmulator):
    """KubernetesEmulator + object metadata, the status subresource, label selectors and garbage collection."""

    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    namespaces: set[str] = attrs.field(factory=set, init=False)  # Namespace objects, by name

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        # kmock reads `/api/v1/namespaces` as "a namespace prefix without a name" and fails, so the namespace
        # list (which Kopf observes) is served here: the created namespaces and every one that holds an object.
        if raw_request.path == "/api/v1/namespaces":
            return await self._serve_namespaces(raw_request)
        # kmock keeps every request for assertions and matches each new one against its reactions by walking
        # them all: quadratic over a session. These tests assert on objects, not requests: keep the latest few.
        for requests in (self._requests, *(payload._requests for payload in self._payloads)):
            del requests[:-KEEP_REQUESTS]
        return await super().__call__(raw_request)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        # The API server's Status reasons (clients such as kubectl 1.20 decide by them, not by the HTTP code).
        reason = {404: "NotFound", 409: "AlreadyExists", 422: "Invalid"}.get(getattr(exc, "status", 0))
        if isinstance(exc, kmock.KubernetesError) and reason:
            exc = attrs.evolve(exc, reason=reason)
        return await super()._render_error(exc)

    def _namespaces(self) -> list[dict[str, Any]]:
        names = self.namespaces | {ns for (_, ns, _) in self.objects if ns}
        return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "uid": n, "resourceVersion": "1"},
                 "status": {"phase": "Active"}} for n in sorted(names)]

    async def _serve_namespaces(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.query.get("watch") != "true":
            return aiohttp.web.json_response({"apiVersion": "v1", "kind": "NamespaceList",
                                              "metadata": {"resourceVersion": "1"}, "items": self._namespaces()})
        response = aiohttp.web.StreamResponse()
        await response.prepare(raw_request)
        seen: set[str] = set()
        deadline = asyncio.get_running_loop().time() + float(raw_request.query.get("timeoutSeconds", 60))
        while asyncio.get_running_loop().time() < deadline:  # new namespaces are announced as they appear
            for item in self._namespaces():
                if item["metadata"]["name"] not in seen:
                    seen.add(item["metadata"]["name"])
                    await response.write(json.dumps({"type": "ADDED", "object": item}).encode() + b"\n")
            await asyncio.sleep(0.2)
        return response

    async def _handle(self, request: rendering.Request) -> Any:
        if request.resource is not None and isinstance(request.data, dict | list):
            self._server_side(request)  # in place: kmock tracks the request object itself
        try:
            response = await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as err:  # e.g. Kopf's resourceVersion precondition
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(err)) from None
        if request.action == kmock.action.CREATE and response.status == 200:
            response.set_status(201)  # the client only decodes creations answered with 201 Created
        if request.action in (kmock.action.CREATE, kmock.action.DELETE, kmock.action.UPDATE):
            await self._collect_garbage()  # also catches dependents created after their owner was deleted
        return response

    def _has_status(self, request: rendering.Request) -> bool:
        resources = self.resources
        return request.resource in resources and "status" in resources[request.resource].subresources

    def _server_side(self, request: rendering.Request) -> None:
        """What the API server adds to a create or patch before storing it."""
        data = request.data
        version = str(next(self._versions))
        if request.action == kmock.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion=version, generation=1)
            if request.namespace:
                meta["namespace"] = request.namespace
            meta.pop("deletionTimestamp", None)
        elif request.action == kmock.action.UPDATE and isinstance(data, dict):
            if self._has_status(request):
                for key in [k for k in data if (k == "status") != (request.subresource == "status")]:
                    del data[key]
            meta = data.setdefault("metadata", {})
            meta["resourceVersion"] = version
            if "spec" in data and request.subresource is None:
                current = self._current(request)
                meta["generation"] = int(current.get("metadata", {}).get("generation", 1)) + 1 if current else 1
        elif request.action == kmock.action.UPDATE and isinstance(data, list):
            data.append({"op": "replace", "path": "/metadata/resourceVersion", "value": version})

    def _current(self, request: rendering.Request) -> dict[str, Any] | None:
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key].raw
        return None

    async def _serve_list(self, request: rendering.Request) -> Any:
        result = await super()._serve_list(request)
        resource = request.resource
        kind = self.resources[resource].kind if resource in self.resources else None
        result.update(apiVersion=f"{resource.group}/{resource.version}".lstrip("/"), kind=f"{kind or 'Object'}List")
        selector = request.params.get("labelSelector")
        if selector:
            result["items"] = [o for o in result["items"]
                               if _matches(o.get("metadata", {}).get("labels") or {}, selector)]
        return result

    async def _collect_garbage(self) -> None:
        """Delete objects whose every owner is gone (background cascading deletion), until none is left. Like
        any deletion, one with finalizers only gets its deletionTimestamp and goes when they are removed."""
        while True:
            async with self._lock:
                alive = {o.raw.get("metadata", {}).get("uid") for o in self.objects.values() if not o.deleted}
                orphans = []
                for key, obj in self.objects.items():
                    meta = {} if obj.deleted else obj.raw.get("metadata", {})
                    owners = [] if meta.get("deletionTimestamp") else meta.get("ownerReferences") or []
                    if owners and not any(ref.get("uid") in alive for ref in owners):
                        orphans.append((key, obj))
                for (resource, _, _), obj in orphans:
                    if obj.raw.get("metadata", {}).get("finalizers"):
                        obj.patch({"metadata": {"deletionTimestamp": _now()}})
                        await self._buses[resource].put({"type": "MODIFIED", "object": obj.raw})
                        continue
                    raw = obj.raw
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})
            if not orphans:
                return

    # --- test helpers (in-process, no HTTP) ---

    def register_crd(self, crd: dict[str, Any]) -> None:
        """Serve a CustomResourceDefinition's resources (discovery) and store the CRD object itself."""
        spec = crd["spec"]
        names = spec["names"]
        for version in spec["versions"]:
            key = f"{spec['group']}/{version['name']}/{names['plural']}"
            self.resources[key] = kmock.ResourceInfo(
                kind=names["kind"], singular=names.get("singular"), namespaced=spec["scope"] == "Namespaced",
                shortnames=set(names.get("shortNames", [])), categories=set(names.get("categories", [])),
                verbs={"create", "delete", "get", "list", "patch", "update", "watch", "deletecollection"},
                subresources=set(version.get("subresources", {})),
            )
        meta = {"name": crd["metadata"]["name"], "uid": str(uuid.uuid4()), "creationTimestamp": _now()}
        self.objects["apiextensions.k8s.io/v1/customresourcedefinitions", None, meta["name"]] = {
            **crd, "metadata": meta}


def load_crds(cluster: Cluster, directory: Path = CRDS) -> list[dict[str, Any]]:
    crds = [doc for path in sorted(directory.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())
            if doc and doc.get("kind") == "CustomResourceDefinition"]
    for crd in crds:
        cluster.register_crd(crd)
    return crds


class ClusterThread:
    """Runs a `Cluster` on 127.0.0.1 in a background thread with its own event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.cluster: Cluster | None = None
        self.url = ""
        self.kubeconfig_path = Path()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),),
                                        name="k8s-emulator", daemon=True)

    async def _main(self) -> None:
        self._stopped = asyncio.Event()
        async with Cluster() as cluster, kmock.Server(cluster) as server:
            cluster.resources.load_bundled()
            for resource in list(cluster.resources):  # a small API makes Kopf's discovery quick
                if (resource.group, resource.version) not in (("", "v1"), ("apiextensions.k8s.io", "v1")):
                    del cluster.resources[resource]
            self.cluster = cluster
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stopped.wait()

    def start(self) -> ClusterThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start")
        return self

    def stop(self) -> None:
        if self._stopped is not None:
            self.loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run fn(*args) on the emulator's loop (its objects are not thread-safe)."""
        async def run() -> Any:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig for the emulator (also remembered as `kubeconfig_path`)."""
        self.kubeconfig_path = path
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "not-checked"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
        }))
        return path


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterThread]:
    """One emulated API server for the session, with the CRDs from crds/ registered and a kubeconfig."""
    thread = ClusterThread().start()
    assert thread.cluster is not None
    thread.call(load_crds, thread.cluster)
    thread.kubeconfig(tmp_path_factory.mktemp("kube") / "config")
    yield thread
    thread.stop()


_namespaces = itertools.count(1)


@pytest.fixture
def namespace(cluster: ClusterThread) -> str:
    """A fresh namespace per test."""
    name = f"test-{next(_namespaces)}"
    assert cluster.cluster is not None
    cluster.call(cluster.cluster.namespaces.add, name)
    return name


__all__ = ["Cluster", "ClusterThread", "cluster", "load_crds", "namespace"]


# --- the kubelet, played by the test: pods become local processes ---

def _pod_dict(pod: Any) -> dict[str, Any]:
    import kubernetes

    return kubernetes.client.ApiClient().sanitize_for_serialization(pod)


# Stands in for graceful pod deletion: a pod the kubelet runs stays in the API, with its deletionTimestamp, until
# its process has exited (a real kubelet deletes a terminating pod for good once its containers have stopped).
FINALIZER = "tunewright.test/kubelet"


class RunningPod:
    def __init__(self, name: str, uid: str, proc: subprocess.Popen[bytes], workdir: Path, termination_log: Path,
                 grace: float):
        self.name, self.uid, self.proc, self.workdir = name, uid, proc, workdir
        self.termination_log, self.grace = termination_log, grace
        self.disruption: tuple[str, str] | None = None  # (kind, reason) for evict/preempt
        self.reported = False  # the exit is in the pod's status
        self.stopping = False  # SIGTERM (then SIGKILL) under way
        self.sigterm_sent = False
        self.released = False  # the finalizer is off: the pod is gone from the API
        self.held = False  # its node stopped answering
        self.started_at = time.monotonic()
        self.exited_at: float | None = None

    def exited(self) -> bool:
        if self.exited_at is None and self.proc.poll() is not None:
            self.exited_at = time.monotonic()
        return self.exited_at is not None


class Kubelet:
    """Runs the pods of one namespace as local processes and reports their phases, like a node would.

    - A new pod: its ConfigMap volumes are written to a directory, emptyDirs are directories, mount paths in the
      command line are rewritten to those directories, env comes from `env`/`envFrom` (Secrets, ConfigMaps),
      the termination message path is a local file. `commands` maps a container command (e.g.
      `tunewright-train`) to a local command line. Status: Running with a running container state.
    - The process exits: Succeeded/Failed with the container's exit code and termination message.
    - The pod is deleted: it stays, terminating (deletionTimestamp; `FINALIZER`), while its process gets SIGTERM
      and, after the grace period (capped by `max_grace`), SIGKILL; once the process has exited, the exit goes
      into the status and the pod is gone from the API. A pod removed from the API without it (a force delete)
      only has its process stopped.
    - `kill(pod)` / `evict(pod)` / `preempt(pod)` simulate a crash, a node-pressure eviction and a preemption;
      `hold(pod)` a node that stops answering (its pod stays terminating when deleted) and `force_delete(pod)`
      what a human then does (`kubectl delete pod --force`; the node never comes back).
    """

    def __init__(self, api: Any, namespace: str, workdir: Path, commands: dict[str, list[str]],
                 extra_env: dict[str, str] | None = None, max_grace: float = 20.0, interval: float = 0.2):
        import kubernetes

        self.core = kubernetes.client.CoreV1Api(api)
        self.namespace, self.workdir, self.commands = namespace, workdir, commands
        self.extra_env, self.max_grace, self.interval = dict(extra_env or {}), max_grace, interval
        self.pods: dict[str, RunningPod] = {}
        self.started: list[str] = []  # pod names in start order
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._thread = threading.Thread(target=self._loop, name=f"kubelet-{namespace}", daemon=True)

    def start(self) -> Kubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for running in list(self.pods.values()):
            if running.proc.poll() is None:
                running.proc.kill()
                running.proc.wait(10)

    # --- test controls ---

    def kill(self, pod: str, sig: int = signal.SIGKILL) -> None:
        self.pods[pod].proc.send_signal(sig)

    def evict(self, pod: str) -> None:
        """Node-pressure eviction: SIGTERM, then the pod fails with reason Evicted."""
        with self._lock:
            self.pods[pod].disruption = ("Evicted", "The node was low on resource: memory.")
        self.pods[pod].proc.send_signal(signal.SIGTERM)

    def preempt(self, pod: str) -> None:
        """Scheduler preemption: SIGTERM, DisruptionTarget condition, then the pod fails."""
        with self._lock:
            self.pods[pod].disruption = ("PreemptionByScheduler", "Preempted by a higher-priority pod")
        self.pods[pod].proc.send_signal(signal.SIGTERM)

    def hold(self, pod: str) -> None:
        """The pod's node stops answering: its process freezes and the kubelet does nothing more for it."""
        with self._lock:
            self.pods[pod].held = True
        self.pods[pod].proc.send_signal(signal.SIGSTOP)

    def force_delete(self, pod: str) -> None:
        """The pod goes from the API without its node's word; its process dies with the node."""
        running = self.pods[pod]
        running.proc.kill()
        running.proc.wait(10)
        running.exited()
        self._release(running)

    def max_parallel(self) -> int:
        """The most pods that ran at the same moment."""
        edges = sorted([(r.started_at, 1) for r in self.pods.values()] +
                       [(r.exited_at or float("inf"), -1) for r in self.pods.values() if r.exited()])
        level = peak = 0
        for _, step in edges:
            level += step
            peak = max(peak, level)
        return peak

    def log(self, pod: str) -> str:
        path = self.workdir / pod / "log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- the loop ---

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as err:  # the API may hiccup; a kubelet keeps going
                print(f"kubelet: {type(err).__name__}: {err}", file=sys.stderr)
            self._stop.wait(self.interval)

    def _sync(self) -> None:
        pods = {p["metadata"]["uid"]: p for p in map(_pod_dict, self.core.list_namespaced_pod(self.namespace).items)}
        known = {r.uid for r in self.pods.values()}
        for uid, pod in pods.items():
            phase = (pod.get("status") or {}).get("phase") or "Pending"
            if uid not in known and phase == "Pending" and not pod["metadata"].get("deletionTimestamp"):
                self._start(pod)
        for running in list(self.pods.values()):
            exited = running.exited()
            pod = pods.get(running.uid)
            if running.held or running.released:
                continue
            if pod is None:  # gone without us (force-deleted): stop the process
                if not exited:
                    self._stop_process(running)
                continue
            deleted = bool(pod["metadata"].get("deletionTimestamp"))
            if exited:
                if not running.reported:
                    self._report_exit(running)
                if deleted:
                    self._release(running)
            elif deleted:
                self._stop_process(running)

    def _stop_process(self, running: RunningPod) -> None:
        if not running.stopping:
            running.stopping = True
            threading.Thread(target=self._terminate, args=(running,), daemon=True).start()

    def _release(self, running: RunningPod) -> None:
        """Take the finalizer off: the terminated pod is gone from the API."""
        import kubernetes

        try:
            self.core.patch_namespaced_pod(running.name, self.namespace, {"metadata": {"finalizers": []}})
        except kubernetes.client.ApiException as err:
            if err.status != 404:
                raise
        running.released = True

    def _terminate(self, running: RunningPod) -> None:
        """The pod was deleted: SIGTERM, wait out the grace period, SIGKILL."""
        running.proc.send_signal(signal.SIGTERM)
        running.sigterm_sent = True
        try:
            running.proc.wait(min(running.grace, self.max_grace))
        except subprocess.TimeoutExpired:
            running.proc.kill()
            running.proc.wait(10)

    def _start(self, pod: dict[str, Any]) -> None:
        import kubernetes

        name, spec = pod["metadata"]["name"], pod["spec"]
        try:
            self.core.patch_namespaced_pod(name, self.namespace, {"metadata": {"finalizers": [FINALIZER]}})
        except kubernetes.client.ApiException as err:
            if err.status == 404:
                return  # deleted before it started
            raise
        container = spec["containers"][0]
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        volumes = {v["name"]: self._volume(v, workdir) for v in spec.get("volumes") or []}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts") or []}
        termination = workdir / "termination-log"
        env = self._env(container, mounts, termination)
        command = [*self.commands[container["command"][0]], *container.get("command", [])[1:]]
        args = [self._rewrite(a, mounts) for a in container.get("args") or []]
        with (workdir / "log").open("wb") as log:
            proc = subprocess.Popen([*command, *args], env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        grace = float(spec.get("terminationGracePeriodSeconds") or 30)
        with self._lock:
            self.pods[name] = RunningPod(name, pod["metadata"]["uid"], proc, workdir, termination, grace)
            self.started.append(name)
        self.core.patch_namespaced_pod_status(name, self.namespace, {"status": {
            "phase": "Running", "startTime": _now(), "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": container["name"], "ready": True, "restartCount": 0,
                                   "image": container["image"], "imageID": "", "started": True,
                                   "state": {"running": {"startedAt": _now()}}}]}})

    def _volume(self, volume: dict[str, Any], workdir: Path) -> Path:
        path = workdir / "volumes" / volume["name"]
        path.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            cm = self.core.read_namespaced_config_map(volume["configMap"]["name"], self.namespace)
            for key, value in (cm.data or {}).items():
                (path / key).write_text(value)
        elif "secret" in volume:
            for key, value in self._secret(volume["secret"]["secretName"]).items():
                (path / key).write_text(value)
        return path

    def _secret(self, name: str) -> dict[str, str]:
        import base64

        secret = self.core.read_namespaced_secret(name, self.namespace)
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    @staticmethod
    def _rewrite(value: str, mounts: dict[str, Path]) -> str:
        for mount, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
            if value == mount or value.startswith(mount.rstrip("/") + "/"):
                return str(local) + value[len(mount.rstrip("/")):]
        return value

    def _env(self, container: dict[str, Any], mounts: dict[str, Path], termination: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "PYTHONPATH", "VIRTUAL_ENV")}
        env.update({k: v for k, v in os.environ.items() if k.startswith(("HF_", "TRANSFORMERS_", "TOKENIZERS_"))})
        for source in container.get("envFrom") or []:
            if "secretRef" in source:
                env.update(self._secret(source["secretRef"]["name"]))
            elif "configMapRef" in source:
                cm = self.core.read_namespaced_config_map(source["configMapRef"]["name"], self.namespace)
                env.update(cm.data or {})
        for item in container.get("env") or []:
            if "value" in item:
                env[item["name"]] = self._rewrite(item["value"], mounts)
            elif "secretKeyRef" in (item.get("valueFrom") or {}):
                ref = item["valueFrom"]["secretKeyRef"]
                env[item["name"]] = self._secret(ref["name"])[ref["key"]]
        path = container.get("terminationMessagePath", "/dev/termination-log")
        env.update({k: str(termination) for k, v in env.items() if v == path})
        env.update(self.extra_env)
        env.setdefault("TMPDIR", str(mounts.get("/tmp", self.workdir)))
        return env

    def _report_exit(self, running: RunningPod) -> None:
        running.reported = True
        code = running.proc.returncode
        code = 128 - code if code < 0 else code  # killed by signal N → 128+N, as a container runtime reports
        message = running.termination_log.read_text() if running.termination_log.exists() else ""
        if not message and code:
            message = "\n".join(self.log(running.name).splitlines()[-5:])  # FallbackToLogsOnError
        term = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": message,
                "startedAt": _now(), "finishedAt": _now()}
        status: dict[str, Any] = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "trainer", "ready": False, "restartCount": 0, "image": "", "imageID": "",
                                   "state": {"terminated": term}}],
        }
        if running.disruption and running.disruption[0] == "Evicted":
            status.update(phase="Failed", reason="Evicted", message=running.disruption[1])
        elif running.disruption:
            status.update(phase="Failed")
            status["conditions"].append({"type": "DisruptionTarget", "status": "True",
                                         "reason": running.disruption[0], "message": running.disruption[1]})
        self.core.patch_namespaced_pod_status(running.name, self.namespace, {"status": status})
