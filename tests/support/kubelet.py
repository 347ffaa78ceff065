"""The kubelet (and the scheduler's binding), played by the test against the real API server: one Node per
namespace, its pods run as local processes.

- Scheduling: a pending pod with no node is bound to this Node (the `binding` subresource, as the scheduler
  does) when its nodeSelector matches the Node's labels and it tolerates the Node's NoSchedule/NoExecute taints;
  otherwise it gets the scheduler's `PodScheduled=False, reason Unschedulable` condition and stays Pending.
- A pod bound here whose image is in `unpullable` waits in ErrImagePull (a container status, no process).
- A pod bound here: its ConfigMap and Secret volumes are written to a directory, other volumes are empty
  directories, mount paths in the command line and env are rewritten to those directories, env comes from
  `env`/`envFrom`, the termination message path is a local file. `commands` maps a container command (e.g.
  `tunewright-train`) to a local command line, started by `spawn` (default: a local process; the operator bench
  passes a lighter stand-in). Status: Running with a running container state.
- The process exits: Succeeded/Failed with the container's exit code and termination message
  (FallbackToLogsOnError).
- The pod is deleted: the API server keeps a bound pod, with its deletionTimestamp, until its kubelet says the
  containers have stopped. Here: SIGTERM, SIGKILL after the pod's grace period (capped by `max_grace`), the exit
  into the status, then the final delete with grace period 0 and the pod's uid as precondition.
- `kill(pod)` / `evict(pod)` / `preempt(pod)` simulate a crash, a node-pressure eviction and a preemption;
  `hold(pod)` a node that stops answering (its deleted pod stays terminating) and `force_delete(pod)` what a human
  then does (`kubectl delete pod --grace-period=0 --force`; the node never comes back).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes.client import ApiException

UNFINISHED = "status.phase!=Succeeded,status.phase!=Failed"
# spawn(command line, env, working directory) -> a started process (subprocess.Popen or the like: poll, wait,
# send_signal, kill, returncode)
Spawn = Callable[[list[str], dict[str, str], Path], Any]


def popen(argv: list[str], env: dict[str, str], workdir: Path) -> subprocess.Popen[bytes]:
    """The default: a local process, its output in <workdir>/log."""
    with (workdir / "log").open("wb") as log:
        return subprocess.Popen(argv, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunningPod:
    def __init__(self, name: str, uid: str, proc: subprocess.Popen[bytes], workdir: Path, termination_log: Path):
        self.name, self.uid, self.proc, self.workdir = name, uid, proc, workdir
        self.termination_log = termination_log
        self.disruption: tuple[str, str] | None = None  # (kind, reason) for evict/preempt
        self.reported = False  # the exit is in the pod's status
        self.stopping = False  # SIGTERM (then SIGKILL) under way
        self.sigterm_sent = False
        self.released = False  # the final delete is done: the pod is gone from the API
        self.held = False  # its node stopped answering
        self.started_at = time.monotonic()
        self.exited_at: float | None = None

    def exited(self) -> bool:
        if self.exited_at is None and self.proc.poll() is not None:
            self.exited_at = time.monotonic()
        return self.exited_at is not None


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    """The scheduler's rule (k8s.io/api/core/v1 Toleration.ToleratesTaint)."""
    for t in tolerations:
        if t.get("effect") and t["effect"] != taint["effect"]:
            continue
        if t.get("operator") == "Exists" and (not t.get("key") or t["key"] == taint["key"]):
            return True
        if t.get("key") == taint["key"] and t.get("value", "") == taint.get("value", ""):
            return True
    return False


class Kubelet:
    """Registers Node `node` and runs the pods of `namespace` bound to it as local processes."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, workdir: Path,
                 commands: dict[str, list[str]], extra_env: dict[str, str] | None = None,
                 labels: dict[str, str] | None = None, taints: list[dict[str, str]] | None = None,
                 gpus: int = 8, max_grace: float = 20.0, interval: float = 0.2, spawn: Spawn | None = None,
                 unpullable: tuple[str, ...] = ()):
        self.api, self.core = api, kubernetes.client.CoreV1Api(api)
        self.namespace, self.workdir, self.commands = namespace, workdir, commands
        self.node = f"node-{namespace}"
        self.labels = {"kubernetes.io/hostname": self.node, **(labels or {})}
        self.taints, self.gpus = list(taints or []), gpus
        self.unpullable = unpullable  # images whose pull fails: their pods wait in ErrImagePull, as on a node
        self.waiting: dict[str, str] = {}  # uid -> name of the pods whose container could not be created
        self.extra_env, self.max_grace, self.interval = dict(extra_env or {}), max_grace, interval
        self.spawn = spawn or popen
        self.pods: dict[str, RunningPod] = {}
        self.started: list[str] = []  # pod names in start order
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._thread = threading.Thread(target=self._loop, name=f"kubelet-{namespace}", daemon=True)

    def start(self) -> Kubelet:
        self._register()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for running in list(self.pods.values()):
            if running.proc.poll() is None:
                running.proc.kill()
                running.proc.wait(10)

    def _register(self) -> None:
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": str(self.gpus)}
        try:
            self.core.create_node({"metadata": {"name": self.node, "labels": self.labels},
                                   "spec": {"taints": self.taints}})
        except ApiException as err:
            if err.status != 409:
                raise
        self.core.patch_node_status(self.node, {"status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test kubelet",
                            "lastHeartbeatTime": _now(), "lastTransitionTime": _now()}]}})

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
        """`kubectl delete pod --grace-period=0 --force`: gone from the API at once; the process dies with its
        node."""
        running = self.pods[pod]
        self.core.delete_namespaced_pod(pod, self.namespace, grace_period_seconds=0)
        running.proc.kill()
        running.proc.wait(10)
        running.exited()
        running.released = True

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
        # Finished pods need nothing more (and would make each pass grow with every pod ever run); JSON as is,
        # since the client's model objects cost ~1 ms a pod.
        listed = self.core.list_namespaced_pod(self.namespace, field_selector=UNFINISHED, _preload_content=False)
        pods = {p["metadata"]["uid"]: p for p in json.loads(listed.data)["items"]}
        known = {r.uid for r in self.pods.values()} | set(self.waiting)
        for uid, name in list(self.waiting.items()):  # deleted: nothing runs, so the final delete at once
            if uid not in pods or pods[uid]["metadata"].get("deletionTimestamp"):
                self._final_delete(name, uid)
                del self.waiting[uid]
        for uid, pod in pods.items():
            spec, meta = pod["spec"], pod["metadata"]
            pending = (pod.get("status") or {}).get("phase", "Pending") == "Pending"
            if not pending or meta.get("deletionTimestamp") or uid in known:
                continue
            if not spec.get("nodeName"):
                self._schedule(pod)
            elif spec["nodeName"] == self.node:
                self._start(pod)
        for running in list(self.pods.values()):
            exited = running.exited()
            pod = pods.get(running.uid)
            if running.held or running.released:
                continue
            if pod is None:  # gone without us (force-deleted): stop the process
                running.released = True
                if not exited:
                    self._stop_process(running, 0)
                continue
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            deleted = bool(pod["metadata"].get("deletionTimestamp"))
            if exited:
                if not running.reported:
                    self._report_exit(running)
                if deleted:
                    self._release(running)
            elif deleted:
                self._stop_process(running, float(grace or 0))

    def _schedule(self, pod: dict[str, Any]) -> None:
        spec, name = pod["spec"], pod["metadata"]["name"]
        selector = spec.get("nodeSelector") or {}
        untolerated = [t for t in self.taints if t["effect"] in ("NoSchedule", "NoExecute")
                       and not tolerates(spec.get("tolerations") or [], t)]
        if any(self.labels.get(k) != v for k, v in selector.items()) or untolerated:
            reason = "didn't match Pod's node affinity/selector" if untolerated == [] else \
                f"had untolerated taint {{{untolerated[0]['key']}: {untolerated[0].get('value', '')}}}"
            conditions = [c for c in (pod.get("status") or {}).get("conditions") or [] if c["type"] == "PodScheduled"]
            if not conditions:
                self.core.patch_namespaced_pod_status(name, self.namespace, {"status": {"conditions": [{
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": f"0/1 nodes are available: 1 node(s) {reason}.", "lastTransitionTime": _now()}]}})
            return
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": self.node}}
        try:  # the client cannot decode the binding's answer (a Status), hence no preloading
            self.core.create_namespaced_pod_binding(name, self.namespace, binding, _preload_content=False)
        except ApiException as err:
            if err.status not in (404, 409):  # deleted meanwhile, or bound already
                raise

    def _stop_process(self, running: RunningPod, grace: float) -> None:
        if not running.stopping:
            running.stopping = True
            threading.Thread(target=self._terminate, args=(running, grace), daemon=True).start()

    def _release(self, running: RunningPod) -> None:
        """The containers have stopped: the final delete, which removes the pod from the API."""
        self._final_delete(running.name, running.uid)
        running.released = True

    def _final_delete(self, name: str, uid: str) -> None:
        try:
            # (with a body, the API server reads the options from it alone, not from the query)
            self.core.delete_namespaced_pod(name, self.namespace,
                                            body={"gracePeriodSeconds": 0, "preconditions": {"uid": uid}})
        except ApiException as err:
            if err.status not in (404, 409):  # gone already, or a new pod under the name
                raise

    def _terminate(self, running: RunningPod, grace: float) -> None:
        """The pod was deleted: SIGTERM, wait out the grace period, SIGKILL."""
        running.proc.send_signal(signal.SIGTERM)
        running.sigterm_sent = True
        try:
            running.proc.wait(min(grace, self.max_grace))
        except subprocess.TimeoutExpired:
            running.proc.kill()
            running.proc.wait(10)

    def _start(self, pod: dict[str, Any]) -> None:
        name, spec = pod["metadata"]["name"], pod["spec"]
        container = spec["containers"][0]
        if container["image"] in self.unpullable:
            self.waiting[pod["metadata"]["uid"]] = name
            self.core.patch_namespaced_pod_status(name, self.namespace, {"status": {"containerStatuses": [{
                "name": container["name"], "ready": False, "restartCount": 0, "image": container["image"],
                "imageID": "", "state": {"waiting": {"reason": "ErrImagePull", "message": f'failed to pull image '
                                                     f'"{container["image"]}": not found'}}}]}})
            return
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        volumes = {v["name"]: self._volume(v, workdir) for v in spec.get("volumes") or []}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts") or []}
        termination = workdir / "termination-log"
        env = self._env(container, mounts, termination)
        command = [*self.commands[container["command"][0]], *container.get("command", [])[1:]]
        args = [self._rewrite(a, mounts) for a in container.get("args") or []]
        proc = self.spawn([*command, *args], env, workdir)
        with self._lock:
            self.pods[name] = RunningPod(name, pod["metadata"]["uid"], proc, workdir, termination)
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
            "containerStatuses": [{"name": "trainer", "ready": False, "restartCount": 0, "image": "trainer",
                                   "imageID": "", "state": {"terminated": term}}],
        }
        if running.disruption and running.disruption[0] == "Evicted":
            status.update(phase="Failed", reason="Evicted", message=running.disruption[1])
        elif running.disruption:
            status.update(phase="Failed")
            status["conditions"].append({"type": "DisruptionTarget", "status": "True",
                                         "reason": running.disruption[0], "message": running.disruption[1]})
        self.core.patch_namespaced_pod_status(running.name, self.namespace, {"status": status})
