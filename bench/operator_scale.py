"""`make bench-operator`: the operator at 100, 300 and 1,000 TrainingJobs on the tests' real control plane (etcd +
kube-apiserver + kube-controller-manager from .bin/, tests/support/control_plane.py), each N applied in a burst
and as a steady stream, maxConcurrentJobs 50. Prints a table, writes bench/operator-results.json, and ends with
one line of key figures (the figures at the largest N, worst of the two modes).

What runs: the operator as in the tests (a subprocess authenticated as the chart's ServiceAccount under the chart's
Role, tests/operator/conftest.py), the test kubelet (tests/support/kubelet.py) binding and running the pods, and
the moto S3 server (a subprocess) holding the dataset and the runs. The kubelet's "process" is a thread
(`ThreadTrainer`) that waits `--seconds` and then writes what tunewright-train writes (progress.json, report.json,
the registry record, result.json; tests/operator/standin_trainer.py's `publish`): 1,000 Python processes would
measure process start-up on the 2 cores instead of the operator.

Figures per run:
- apply → pod: from the create call to the pod's ADDED event (a watch), for jobs applied while a slot was free;
- slot freed → next pod: from a pod's Succeeded event to the next waiting job's pod ADDED (first in, first out);
- API requests per job: apiserver_request_total from the kube-apiserver's /metrics (admin client), minus what the
  bench and its kubelet sent (counted at their client), watches excluded; what remains is the operator's (and the
  controller-manager's few background calls);
- storage requests per job: the operator's S3 requests (its Secret points it at a counting proxy in front of moto);
- operator CPU seconds (/proc/<pid>/stat) and peak RSS (VmHWM), both operator processes of the run together;
- where the 2 cores went: CPU ms per job of each process over the run (the operator as above; kube-apiserver, etcd,
  kube-controller-manager, the moto server and the bench process itself from the first job's create to the end),
  the bench's split into its stand-in trainers (their threads' own CPU time), its kubelet's loop thread and the
  rest (watches, the S3 counting proxy, the main loop), and what the whole machine spent (/proc/stat: other
  users' work shows as the difference); and the throughput the run sustained (jobs per second of wall time);
- resync: in burst mode the operator is killed (SIGKILL) when half the jobs have finished and started again; the
  time from the new process's start until its job gauges account for all N jobs;
- lost (a job not Succeeded at the end) and duplicated (a second pod or Adapter for a job): must be 0.

With `--profile PATH` every operator process runs bench/stack_sampler.py (started by a sitecustomize
module on its PYTHONPATH): the functions with the most CPU, self and total, over all runs go to PATH, every
sampled stack with its CPU microseconds to PATH.stacks (the sampler costs the operator CPU of its own).

    python -m bench.operator_scale [--sizes 100,300,1000] [--modes burst,stream] [--seconds 3] [--rate 8]
                                   [--profile PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import boto3  # noqa: E402
import kubernetes  # noqa: E402

from bench import stack_sampler  # noqa: E402
from support.control_plane import ControlPlane, free_port, missing_binaries  # noqa: E402
from support.helm import Helm, tool  # noqa: E402
from support.kubelet import Kubelet  # noqa: E402
from support.s3 import ACCESS_KEY, BUCKET, REGION, SECRET_KEY, FaultProxy, aws_env  # noqa: E402
from tunewright.config import load_config  # noqa: E402
from tunewright.data import synthetic  # noqa: E402
from tunewright.data.store import DatasetStore  # noqa: E402
from tunewright.runs import Progress, RunStore  # noqa: E402
from tunewright.storage import S3Storage  # noqa: E402

MAX_CONCURRENT = 50
GROUP, VERSION = "tunewright.dev", "v1alpha1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _load(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.stem + "_for_bench", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


operator_fixtures = _load(ROOT / "tests" / "operator" / "conftest.py")
standin = _load(ROOT / "tests" / "operator" / "standin_trainer.py")


# --- the kubelet's stand-in process ---

class ThreadTrainer:
    """A kubelet "process" (what kubelet.Kubelet needs of subprocess.Popen) that is a thread: it waits `seconds`,
    then writes the run as tunewright-train would; SIGTERM ends it at once with 143 (nothing to checkpoint)."""

    cpu_s = 0.0  # all stand-ins' own CPU time (time.thread_time), for the bench's per-process figures
    _cpu_lock = threading.Lock()

    def __init__(self, argv: list[str], env: dict[str, str], seconds: float, s3: Any):
        args = dict(zip(argv[1::2], argv[2::2], strict=False))
        self.env, self.seconds, self.s3 = env, seconds, s3
        self.config, self.storage, self.run_id = args["--config"], args["--storage"], args["--run-id"]
        self.returncode: int | None = None
        self.pid = 0
        self._term = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        began = time.thread_time()
        try:
            self._train()
        finally:
            with ThreadTrainer._cpu_lock:
                ThreadTrainer.cpu_s += time.thread_time() - began

    def _train(self) -> None:
        try:
            config = load_config(self.config)
            root = S3Storage(self.storage, self.s3)
            run = RunStore(root, self.run_id)
            total = config.training.max_steps or 1
            run.write_progress(Progress(state="running", step=0, total_steps=total, epoch=0.0))
            if self._term.wait(self.seconds):
                self.returncode = 143
                return
            standin.publish(root, run, config, total, None, None, self.env)
            self.returncode = 0
        except Exception as err:
            Path(self.env.get("TUNEWRIGHT_TERMINATION_LOG", os.devnull)).write_text(f"{type(err).__name__}: {err}")
            self.returncode = 1

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise subprocess.TimeoutExpired("stand-in", timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGKILL):
            self._term.set()

    def kill(self) -> None:
        self._term.set()


# --- the bench's own API requests ---

def _classify(method: str, url: str) -> tuple[str, str, str]:
    """(verb, resource, subresource) as apiserver_request_total labels them."""
    parsed = urlparse(url)
    parts = [p for p in parsed.path.split("/") if p]
    parts = parts[2:] if parts[0] == "api" else parts[3:]  # /api/v1/..., /apis/<group>/<version>/...
    if parts[:1] == ["namespaces"] and len(parts) > 2:
        parts = parts[2:]
    resource, name, sub = [*parts, "", "", ""][:3]
    watching = "watch=true" in parsed.query.lower()
    verb = {"POST": "POST", "PUT": "PUT", "PATCH": "PATCH", "DELETE": "DELETE"}.get(method) or \
        ("WATCH" if watching else "GET" if name else "LIST")
    return verb, resource, sub


def counted_client(plane: ControlPlane) -> tuple[kubernetes.client.ApiClient, Counter[tuple[str, str, str]]]:
    api, sent = plane.client(), Counter[tuple[str, str, str]]()
    request = api.rest_client.request
    lock = threading.Lock()

    def counting(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        with lock:
            sent[_classify(method, url)] += 1
        return request(method, url, *args, **kwargs)

    api.rest_client.request = counting  # every call of this client goes through it
    return api, sent


# --- what the watch sees ---

@dataclass
class Timeline:
    created: dict[str, float] = field(default_factory=dict)  # job -> create call
    in_flight_at_create: dict[str, int] = field(default_factory=dict)
    pod_added: dict[str, float] = field(default_factory=dict)  # job -> first pod ADDED
    pods: dict[str, set[str]] = field(default_factory=dict)  # job -> pod names
    freed: list[float] = field(default_factory=list)  # pod Succeeded events
    freed_pods: set[str] = field(default_factory=set)
    succeeded: dict[str, float] = field(default_factory=dict)  # job -> TrainingJob Succeeded
    down: tuple[float, float] | None = None  # the operator's restart: killed .. its gauges account for all jobs
    lock: threading.Lock = field(default_factory=threading.Lock)


class Watcher:
    """Watches the namespace's pods and TrainingJobs (raw JSON) into a Timeline."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, timeline: Timeline):
        self.timeline, self._watches = timeline, []
        core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
        self._follow(core.list_namespaced_pod, (namespace,), self._pod)
        self._follow(custom.list_namespaced_custom_object, (GROUP, VERSION, namespace, "trainingjobs"), self._job)

    def _follow(self, fn: Any, args: tuple[Any, ...], handle: Any) -> None:
        watch = kubernetes.watch.Watch()
        self._watches.append(watch)

        def loop() -> None:
            while True:
                try:
                    for event in watch.stream(fn, *args, deserialize=False, timeout_seconds=3600):
                        handle(event["type"], event["object"], time.monotonic())
                    return
                except Exception:  # a broken stream: open it again (ADDED repeats are harmless below)
                    if getattr(watch, "_stop", False):
                        return
                    time.sleep(0.2)
        threading.Thread(target=loop, daemon=True).start()

    def _pod(self, type_: str, pod: dict[str, Any], now: float) -> None:
        job = (pod["metadata"].get("labels") or {}).get("tunewright.dev/trainingjob", "")
        t = self.timeline
        with t.lock:
            t.pods.setdefault(job, set()).add(pod["metadata"]["name"])
            t.pod_added.setdefault(job, now)
            if (pod.get("status") or {}).get("phase") == "Succeeded" and pod["metadata"]["name"] not in t.freed_pods:
                t.freed_pods.add(pod["metadata"]["name"])
                t.freed.append(now)

    def _job(self, type_: str, tj: dict[str, Any], now: float) -> None:
        if (tj.get("status") or {}).get("phase") == "Succeeded":
            with self.timeline.lock:
                self.timeline.succeeded.setdefault(tj["metadata"]["name"], now)

    def stop(self) -> None:
        for watch in self._watches:
            watch.stop()


# --- one run ---

@dataclass
class Result:
    mode: str
    jobs: int
    wall_s: float
    apply_to_pod_p50_s: float | None
    apply_to_pod_p95_s: float | None
    apply_to_pod_p99_s: float | None
    apply_samples: int
    next_pod_p95_s: float | None
    next_samples: int
    requests_per_job: float
    requests_by_verb_resource: dict[str, float]
    apiserver_requests_per_job: float
    bench_requests_by_verb_resource: dict[str, float]  # what the bench's kubelet and watches sent (not WATCH)
    storage_requests_per_job: float
    cpu_s: float
    cpu_ms_per_job: float
    cpu_ms_per_job_by_process: dict[str, float]  # operator, kube-apiserver, etcd, ..., bench (see the docstring)
    jobs_per_s: float
    rss_mb: float
    resync_s: float | None
    lost: int
    duplicated: int


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)], 3)


def latencies(t: Timeline) -> tuple[list[float], list[float]]:
    """apply → pod for jobs applied while a slot was free; freed → next pod for those that waited. Slots freed
    while the operator was down are paired with a pod like the others (first freed, first filled) but not
    counted: the resync figure is that time."""
    apply = [t.pod_added[j] - c for j, c in t.created.items()
             if t.in_flight_at_create[j] < MAX_CONCURRENT and j in t.pod_added]
    waited = {j for j, n in t.in_flight_at_create.items() if n >= MAX_CONCURRENT}
    events = sorted([(at, 0, "") for at in t.freed] + [(t.pod_added[j], 1, j) for j in waited if j in t.pod_added])
    frees: deque[float] = deque()
    pending = set(waited)
    following = []
    for at, kind, job in events:
        if kind == 0 and pending:
            frees.append(at)
        elif kind == 1:
            pending.discard(job)
            if frees:
                freed = frees.popleft()
                if not (t.down and t.down[0] <= freed <= t.down[1]):
                    following.append(at - freed)
    return apply, following


def proc_cpu_rss(pid: int) -> tuple[float, float]:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / CLK_TCK
    hwm = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) / 1024


def cpu_seconds(stat: str = "/proc/self/stat") -> float:
    """CPU seconds (user + system) so far of a process (/proc/<pid>/stat) or thread (/proc/self/task/<tid>/stat)."""
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_seconds() -> float:
    """CPU seconds all processes on the machine spent (busy time of every core, /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class CpuMeter:
    """CPU seconds per process of the system under test, from a starting point (see the module docstring)."""

    def __init__(self, pids: dict[str, int], kubelet_tid: int | None):
        self.pids, self.kubelet_tid = pids, kubelet_tid
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        now = {name: cpu_seconds(f"/proc/{pid}/stat") for name, pid in self.pids.items()}
        now["bench"] = cpu_seconds()
        now["bench: stand-in trainers"] = ThreadTrainer.cpu_s
        now["bench: kubelet loop"] = cpu_seconds(f"/proc/self/task/{self.kubelet_tid}/stat") \
            if self.kubelet_tid else 0.0
        now["machine"] = machine_cpu_seconds()
        return now

    def spent(self) -> dict[str, float]:
        end = self._read()
        used = {name: end[name] - self.start[name] for name in end}
        used["bench: rest"] = used["bench"] - used["bench: stand-in trainers"] - used["bench: kubelet loop"]
        return used


def jobs_gauge(op: Any) -> int:
    try:
        text = op.metrics()
    except OSError:
        return -1
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("tunewright_operator_jobs{")))


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args, self.workdir = args, workdir
        self.plane = ControlPlane(workdir / "control-plane").start()
        self.plane.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        self.plane.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        self.helm = Helm(tool("helm"))  # type: ignore[arg-type]
        port = free_port()
        self.moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p",
                                      str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.moto_url = f"http://127.0.0.1:{port}"
        self.s3 = boto3.client("s3", endpoint_url=self.moto_url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                               aws_secret_access_key=SECRET_KEY)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.s3.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        self.proxy = FaultProxy(self.moto_url)  # counts the operator's requests (no faults)
        self.samples = workdir / "samples"
        if args.profile:
            self._sample_operators()
        rows = synthetic.write_jsonl(synthetic.rated_rows(), workdir / "songs.jsonl")
        self.dataset_rows = rows

    def _sample_operators(self) -> None:
        """Every operator process started from now on runs the stack sampler (module docstring)."""
        site = self.workdir / "profile-site"
        site.mkdir()
        self.samples.mkdir()
        sampler = ROOT / "bench" / "stack_sampler.py"
        (site / "sitecustomize.py").write_text(
            "import importlib.util, os\n"
            "if os.environ.get('TUNEWRIGHT_STACK_SAMPLES'):\n"
            f"    spec = importlib.util.spec_from_file_location('stack_sampler', {str(sampler)!r})\n"
            "    module = importlib.util.module_from_spec(spec)\n"
            "    spec.loader.exec_module(module)\n"
            "    module.start(os.path.join(os.environ['TUNEWRIGHT_STACK_SAMPLES'], f'{os.getpid()}.txt'))\n")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
        os.environ["TUNEWRIGHT_STACK_SAMPLES"] = str(self.samples)

    def profile(self, raw: Path) -> str:
        """The summary of the operators' samples; all their stacks go to `raw`."""
        files = sorted(self.samples.glob("*.txt"))
        raw.write_text("".join(f.read_text() for f in files))
        return stack_sampler.summary(files)

    def close(self) -> None:
        self.proxy.close()
        self.moto.terminate()
        self.moto.wait(10)
        self.plane.stop()

    def run(self, mode: str, n: int) -> Result:
        namespace = f"bench-{mode}-{n}"
        self.plane.kubectl("create", "namespace", namespace)
        root = f"s3://{BUCKET}/{namespace}"
        DatasetStore(S3Storage(root, self.s3)).import_file("songs", self.dataset_rows, "rated")
        api, sent = counted_client(self.plane)
        core, custom = kubernetes.client.CoreV1Api(api), kubernetes.client.CustomObjectsApi(api)
        core.create_namespaced_secret(namespace, {"metadata": {"name": "s3", "labels": {
            "tunewright.dev/storage-credentials": "true"}}, "stringData": aws_env(
            self.proxy.endpoint)})
        kubeconfig = operator_fixtures.install_operator_account(self.plane, self.helm, namespace,
                                                                self.workdir / f"{namespace}.kubeconfig")
        seconds = self.args.seconds
        kubelet = Kubelet(api, namespace, self.workdir / namespace, {"tunewright-train": ["stand-in"]},
                          spawn=lambda argv, env, _dir: ThreadTrainer(argv, env, seconds, self.s3)).start()
        timeline = Timeline()
        watcher = Watcher(api, namespace, timeline)
        op = operator_fixtures.Operator(kubeconfig, namespace, self.workdir / f"{namespace}-operator.log", root,
                                        "--max-concurrent-jobs", str(MAX_CONCURRENT), "--poll-seconds",
                                        str(self.args.poll)).start()
        time.sleep(1)
        before, sent_before, storage_before = self.plane.request_counts(), Counter(sent), len(self.proxy.log)
        meter = CpuMeter({"moto": self.moto.pid, **{name: p.pid for name, p in self.plane.procs.items()}},
                         kubelet._thread.native_id)
        cpu = rss = 0.0
        resync: float | None = None
        start = time.monotonic()
        spec = {"dataset": {"id": "songs"}, "training": {"maxSteps": 4}, "storage": {"uri": root, "secretName": "s3"}}
        interval = 0.0 if mode == "burst" else 1.0 / self.args.rate
        restarted = mode != "burst"
        for i in range(n):
            name = f"job-{i:04d}"
            if interval:
                time.sleep(max(0.0, start + i * interval - time.monotonic()))
            with timeline.lock:
                timeline.in_flight_at_create[name] = len(timeline.created) - len(timeline.freed)
                timeline.created[name] = time.monotonic()
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": name},
                "spec": {**spec, "name": name}}, _preload_content=False)
        deadline = time.monotonic() + self.args.timeout
        while len(timeline.succeeded) < n and time.monotonic() < deadline:
            if not restarted and len(timeline.succeeded) >= n // 2:
                restarted = True
                used, peak = proc_cpu_rss(op.proc.pid)
                cpu, rss = cpu + used, max(rss, peak)
                began = time.monotonic()
                op.restart()  # SIGKILL, then a new process (start() waits for its /healthz)
                while jobs_gauge(op) != n and time.monotonic() < began + 120:
                    time.sleep(0.05)
                resync = round(time.monotonic() - began, 2)
                timeline.down = (began, began + resync)
            time.sleep(0.2)
        wall = time.monotonic() - start
        time.sleep(1)  # the last status writes' echoes
        used, peak = proc_cpu_rss(op.proc.pid)
        cpu, rss = cpu + used, max(rss, peak)
        spent_cpu = {"operator": cpu, **meter.spent()}
        spent_cpu["other processes"] = spent_cpu["machine"] - sum(v for k, v in spent_cpu.items()
                                                                  if k in PROCESSES)
        after, spent_bench = self.plane.request_counts(), sent - sent_before
        storage = len(self.proxy.log) - storage_before
        op.stop()
        watcher.stop()
        kubelet.stop()

        operator = Counter({k: after[k] - before.get(k, 0) - spent_bench.get(k, 0) for k in after})
        operator = Counter({k: v for k, v in operator.items() if v > 0 and k[0] != "WATCH"})
        total = sum(v for k, v in after.items() if k[0] != "WATCH") - sum(v for k, v in before.items()
                                                                           if k[0] != "WATCH")
        listed = json.loads(custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs",
                                                                 _preload_content=False).data)["items"]
        adapters = json.loads(custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "adapters",
                                                                   _preload_content=False).data)["items"]
        lost = sum((tj.get("status") or {}).get("phase") != "Succeeded" for tj in listed) + n - len(listed)
        pods_per_job = Counter({j: len(ps) for j, ps in timeline.pods.items()})
        duplicated = sum(c - 1 for c in pods_per_job.values() if c > 1) + max(0, len(adapters) - n) + \
            sum(int((tj.get("status") or {}).get("attempts") or 1) - 1 for tj in listed)
        apply, following = latencies(timeline)
        return Result(
            mode=mode, jobs=n, wall_s=round(wall, 1),
            apply_to_pod_p50_s=pct(apply, 0.5), apply_to_pod_p95_s=pct(apply, 0.95),
            apply_to_pod_p99_s=pct(apply, 0.99), apply_samples=len(apply),
            next_pod_p95_s=pct(following, 0.95), next_samples=len(following),
            requests_per_job=round(sum(operator.values()) / n, 2),
            requests_by_verb_resource={"/".join(p for p in k if p): round(v / n, 2)
                                       for k, v in sorted(operator.items(), key=lambda kv: -kv[1])},
            apiserver_requests_per_job=round(total / n, 2), storage_requests_per_job=round(storage / n, 2),
            bench_requests_by_verb_resource={"/".join(p for p in k if p): round(v / n, 2) for k, v in
                                             sorted(spent_bench.items(), key=lambda kv: -kv[1]) if k[0] != "WATCH"},
            cpu_s=round(cpu, 1), cpu_ms_per_job=round(1000 * cpu / n, 1),
            cpu_ms_per_job_by_process={name: round(1000 * s / n, 1) for name, s in spent_cpu.items()},
            jobs_per_s=round(n / wall, 2), rss_mb=round(rss, 1),
            resync_s=resync, lost=lost, duplicated=duplicated)


PROCESSES = ("operator", "kube-apiserver", "etcd", "kube-controller-manager", "moto", "bench")
CPU_COLUMNS = (*PROCESSES, "bench: stand-in trainers", "bench: kubelet loop", "bench: rest", "other processes",
               "machine")


def cpu_table(results: list[Result]) -> str:
    """Where the cores went: CPU ms per job of each process, and the throughput."""
    head = ("mode", "jobs", "jobs/s", *CPU_COLUMNS)
    rows = [head] + [(r.mode, str(r.jobs), f"{r.jobs_per_s:.2f}",
                      *(f"{r.cpu_ms_per_job_by_process.get(c, 0):.0f}" for c in CPU_COLUMNS)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


FIGURES = ("apply_to_pod_p95_s", "next_pod_p95_s", "requests_per_job", "storage_requests_per_job",
           "cpu_ms_per_job", "rss_mb", "resync_s")


def slopes(results: list[Result]) -> dict[str, dict[str, float | None]]:
    """Per mode and figure, between the smallest and the largest N: the exponent k in figure ~ N^k (0: does not
    grow with N; 1: grows in proportion)."""
    out: dict[str, dict[str, float | None]] = {}
    for mode in sorted({r.mode for r in results}):
        runs = sorted((r for r in results if r.mode == mode), key=lambda r: r.jobs)
        if len(runs) < 2:
            continue
        small, large = asdict(runs[0]), asdict(runs[-1])
        out[mode] = {}
        for name in FIGURES:
            a, b = small[name], large[name]
            out[mode][name] = round(math.log(b / a) / math.log(runs[-1].jobs / runs[0].jobs), 2) \
                if a and b else None
    return out


def table(results: list[Result]) -> str:
    head = ("mode", "jobs", "wall s", "apply→pod p50/p95/p99 s", "next pod p95 s", "API req/job", "S3 req/job",
            "CPU s (ms/job)", "RSS MB", "resync s", "lost", "dup")
    rows = [head] + [(r.mode, str(r.jobs), f"{r.wall_s:.0f}",
                      f"{r.apply_to_pod_p50_s}/{r.apply_to_pod_p95_s}/{r.apply_to_pod_p99_s}",
                      str(r.next_pod_p95_s), f"{r.requests_per_job:.1f}", f"{r.storage_requests_per_job:.1f}",
                      f"{r.cpu_s:.0f} ({r.cpu_ms_per_job:.0f})", f"{r.rss_mb:.0f}", str(r.resync_s), str(r.lost),
                      str(r.duplicated)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def key_line(results: list[Result]) -> str:
    n = max(r.jobs for r in results)
    at = [r for r in results if r.jobs == n]

    def worst(name: str) -> Any:
        values = [getattr(r, name) for r in at if getattr(r, name) is not None]
        return max(values) if values else None
    return (f"op_apply_to_pod_p95_s={worst('apply_to_pod_p95_s')} op_next_pod_p95_s={worst('next_pod_p95_s')} "
            f"op_requests_per_job={worst('requests_per_job')} op_rss_mb={worst('rss_mb')} "
            f"op_resync_s={worst('resync_s')} op_lost={sum(r.lost + r.duplicated for r in at)} jobs={n}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.operator_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100,300,1000", help="numbers of TrainingJobs, one run each per mode")
    p.add_argument("--modes", default="burst,stream", help="burst (all at once) and/or stream (--rate a second)")
    p.add_argument("--seconds", type=float, default=3.0, help="how long each trainer pod runs")
    p.add_argument("--rate", type=float, default=8.0, help="jobs applied per second in stream mode")
    p.add_argument("--poll", type=float, default=5.0, help="the operator's --poll-seconds")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a run may take before the rest count lost")
    p.add_argument("--out", default=str(ROOT / "bench" / "operator-results.json"))
    p.add_argument("--profile", help="sample the operator's stacks; where to write the summary")
    args = p.parse_args(argv)
    missing = missing_binaries()
    if missing:
        print(f"bench-operator: no {', '.join(missing)} in .bin/ (`make control-plane` builds them)", file=sys.stderr)
        return 2
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            for n in (int(s) for s in args.sizes.split(",")):
                for mode in args.modes.split(","):
                    results.append(bench.run(mode, n))
                    print(table(results[-1:]).splitlines()[-1], flush=True)
                    print("  CPU ms/job: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                       results[-1].cpu_ms_per_job_by_process.items()), flush=True)
            if args.profile:
                Path(args.profile).write_text(bench.profile(Path(args.profile + ".stacks")) + "\n")
                print(f"operator profile: {args.profile} (the stacks: {args.profile}.stacks)")
        finally:
            bench.close()
    grown = slopes(results)
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": f"{platform.machine()}, "
              f"{os.cpu_count()} cores", "max_concurrent_jobs": MAX_CONCURRENT, "pod_seconds": args.seconds,
              "stream_rate": args.rate, "poll_seconds": args.poll, "results": [asdict(r) for r in results],
              "slopes": grown, "key": key_line(results)}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))
    print("CPU ms per job by process (the operator over its whole life, the others from the first create):")
    print(cpu_table(results))
    print("growth with N (exponent k in figure ~ N^k, smallest to largest N):")
    for mode, figures in grown.items():
        print(f"  {mode}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))
    print(key_line(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

