"""The operator's pure parts: pod manifests, pod outcome classification, queue order, conditions, settings."""

from __future__ import annotations

import re
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from kubernetes.client import ApiException

from tunewright.config import validate
from tunewright.ids import check_id
from tunewright_operator import errors, handover, multinode, pods, queue
from tunewright_operator.models import TrainingJobSpec
from tunewright_operator.podstate import pod_state
from tunewright_operator.settings import Settings
from tunewright_operator.status import set_condition

TJ: dict[str, Any] = {"apiVersion": "tunewright.dev/v1alpha1", "kind": "TrainingJob",
                      "metadata": {"name": "tune", "namespace": "ml", "uid": "0f1e2d3c-aaaa-bbbb-cccc-0123456789ab"}}


def spec(**fields: Any) -> TrainingJobSpec:
    return validate({"dataset": {"id": "songs"}, **fields}, TrainingJobSpec)


def test_pod_manifest() -> None:
    s = spec(resources={"gpus": 2, "cpu": "8", "memory": "32Gi", "nodeSelector": {"gpu": "a100"},
                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                        "priorityClassName": "training"},
             storage={"uri": "s3://b/p", "secretName": "s3-creds"}, image="registry/trainer:1")
    pod = pods.pod(TJ, s, 3, "ml-tune-0f1e2d3c", "s3://b/p", Settings(grace_seconds=120))
    meta, podspec = pod["metadata"], pod["spec"]
    container = podspec["containers"][0]
    assert meta["name"] == "tune-a3"
    assert meta["ownerReferences"] == [{"apiVersion": "tunewright.dev/v1alpha1", "kind": "TrainingJob",
                                        "name": "tune", "uid": TJ["metadata"]["uid"], "controller": True,
                                        "blockOwnerDeletion": True}]
    assert meta["labels"]["tunewright.dev/trainingjob"] == "tune" and meta["labels"]["tunewright.dev/attempt"] == "3"
    assert container["image"] == "registry/trainer:1"
    assert container["command"] == ["tunewright-train"]
    assert container["args"] == ["--config", "/etc/tunewright/config.yaml", "--storage", "s3://b/p", "--run-id",
                                 "ml-tune-0f1e2d3c", "--resume", "auto", "--metrics-port", "9400", "--quiet"]
    assert container["resources"] == {"requests": {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"},
                                      "limits": {"memory": "32Gi", "nvidia.com/gpu": "2"}}
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TUNEWRIGHT_TERMINATION_LOG"] == container["terminationMessagePath"] == "/dev/termination-log"
    assert env["TUNEWRIGHT_TERMINATION_GRACE_SECONDS"] == str(pod["spec"]["terminationGracePeriodSeconds"])
    assert env["TUNEWRIGHT_TRAININGJOB"] == "tune" and env["TUNEWRIGHT_NAMESPACE"] == "ml"
    assert env["TUNEWRIGHT_TRAININGJOB_UID"] == TJ["metadata"]["uid"]
    assert not any("AWS" in k for k in env), "credentials only by Secret reference"
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                            "capabilities": {"drop": ["ALL"]},
                                            "seccompProfile": {"type": "RuntimeDefault"}}
    assert podspec["securityContext"]["runAsNonRoot"] is True
    assert podspec["restartPolicy"] == "Never" and podspec["terminationGracePeriodSeconds"] == 120
    assert podspec["nodeSelector"] == {"gpu": "a100"} and podspec["priorityClassName"] == "training"
    assert podspec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert {"name": "config", "configMap": {"name": "tune-config"}} in podspec["volumes"]


@pytest.mark.parametrize(("gpus", "nodes", "shm"), [(0, 1, False), (1, 1, False), (2, 1, True), (4, 2, True)])
def test_several_gpus_get_an_in_memory_dev_shm(gpus: int, nodes: int, shm: bool) -> None:
    """NCCL's shared-memory transport needs more than the container runtime's 64 MB /dev/shm."""
    s = spec(resources={"gpus": gpus, "nodes": nodes})
    for pod in multinode.pod_set(TJ, s, 1, "r", "file:///x", Settings()):
        mounts = {m["mountPath"]: m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert ("/dev/shm" in mounts) is shm
        if shm:
            assert volumes[mounts["/dev/shm"]] == {"name": "dshm", "emptyDir": {"medium": "Memory"}}


def test_cpu_pod_requests_no_gpu() -> None:
    pod = pods.pod(TJ, spec(), 1, "r", "file:///x", Settings())
    container = pod["spec"]["containers"][0]
    assert container["resources"] == {} and "envFrom" not in container
    assert container["image"] == Settings().image


GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
POOL_TAINT = {"key": "pool", "operator": "Equal", "value": "train", "effect": "NoExecute"}


def placement(pod: dict[str, Any]) -> tuple[dict[str, str] | None, list[dict[str, Any]] | None]:
    return pod["spec"].get("nodeSelector"), pod["spec"].get("tolerations")


def test_gpu_pods_get_the_operator_node_selector_and_tolerations() -> None:
    settings = Settings(gpu_node_selector={"accelerator": "a100", "pool": "gpu"}, gpu_tolerations=(GPU_TAINT,))
    s = spec(resources={"gpus": 1})
    assert placement(pods.pod(TJ, s, 1, "r", "file:///x", settings)) == (
        {"accelerator": "a100", "pool": "gpu"}, [GPU_TAINT])
    assert placement(pods.pod(TJ, s, 1, "r", "file:///x", Settings())) == (None, [GPU_TAINT]), "built-in default"


def test_job_placement_is_merged_over_the_gpu_defaults() -> None:
    """The job's selector keys win, its tolerations follow the defaults, and an identical one appears once."""
    settings = Settings(gpu_node_selector={"accelerator": "a100", "pool": "gpu"}, gpu_tolerations=(GPU_TAINT,))
    s = spec(resources={"gpus": 2, "nodeSelector": {"accelerator": "h100", "zone": "b"},
                        "tolerations": [POOL_TAINT, GPU_TAINT]})
    assert placement(pods.pod(TJ, s, 1, "r", "file:///x", settings)) == (
        {"accelerator": "h100", "pool": "gpu", "zone": "b"}, [GPU_TAINT, POOL_TAINT])


def test_cpu_pods_get_only_their_own_placement() -> None:
    settings = Settings(gpu_node_selector={"accelerator": "a100"}, gpu_tolerations=(GPU_TAINT,))
    assert placement(pods.pod(TJ, spec(), 1, "r", "file:///x", settings)) == (None, None)
    own = spec(resources={"nodeSelector": {"zone": "b"}, "tolerations": [POOL_TAINT]})
    assert placement(pods.pod(TJ, own, 1, "r", "file:///x", settings)) == ({"zone": "b"}, [POOL_TAINT])


def test_every_node_of_a_multi_node_gpu_job_gets_the_gpu_placement() -> None:
    settings = Settings(gpu_node_selector={"accelerator": "a100"}, gpu_tolerations=(GPU_TAINT,))
    s = spec(resources={"gpus": 4, "nodes": 3, "tolerations": [POOL_TAINT]})
    members = multinode.pod_set(TJ, s, 2, "r", "file:///x", settings)
    assert len(members) == 3
    for pod in members:
        assert placement(pod) == ({"accelerator": "a100"}, [GPU_TAINT, POOL_TAINT])
    assert settings.gpu_tolerations == (GPU_TAINT,) and settings.gpu_node_selector == {"accelerator": "a100"}


@pytest.mark.parametrize("name", ["short", "a" * 63, f"{'a' * 30}.songs.{'b' * 40}", "x" * 253])
def test_derived_names_and_labels_fit_kubernetes_limits(name: str) -> None:
    label = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
    assert len(pods.job_label(name)) <= 63 and label.match(pods.job_label(name))
    assert (pods.job_label(name) == name) == (len(name) <= 63)
    for derived in (pods.pod_name(name, 12), pods.config_map_name(name), multinode.node_pod_name(name, 12, 7)):
        assert len(derived) <= 253 and derived.startswith(name[:200])
    assert len(multinode.service_name(name, 12)) <= 63
    assert pods.job_label(name + "x") != pods.job_label(name) or len(name) < 63


def test_run_id_is_a_stable_dns_label() -> None:
    assert pods.run_id("ml", "tune", TJ["metadata"]["uid"]) == "ml-tune-0f1e2d3c"
    long = pods.run_id("n" * 63, "a.b" + "c" * 200, "ffff0000-1111")
    assert check_id(long) == long and long.endswith("-ffff0000") and len(long) <= 63


def pod(phase: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "status": {"phase": phase, **status}}


def terminated(code: int, message: str = "", reason: str = "Error") -> list[dict[str, Any]]:
    return [{"name": "trainer", "state": {"terminated": {"exitCode": code, "message": message, "reason": reason}}}]


def test_pod_state_tells_disruptions_from_trainer_errors() -> None:
    crash = pod_state(pod("Failed", containerStatuses=terminated(1, "ValueError: bad rows\n")))
    assert (crash.reason, crash.disrupted, crash.exit_code) == ("TrainerError", False, 1)
    assert crash.describe() == "TrainerError: exit code 1; ValueError: bad rows"
    evicted = pod_state(pod("Failed", reason="Evicted", message="The node was low on resource: memory."))
    assert (evicted.reason, evicted.disrupted) == ("Evicted", True)
    assert "low on resource" in evicted.message
    preempted = pod_state(pod("Failed", containerStatuses=terminated(143), conditions=[
        {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]))
    assert (preempted.reason, preempted.disrupted, preempted.exit_code) == ("PreemptionByScheduler", True, 143)
    oom = pod_state(pod("Failed", containerStatuses=terminated(137, reason="OOMKilled")))
    assert (oom.reason, oom.disrupted) == ("OOMKilled", False)
    assert pod_state({"metadata": {"name": "p", "deletionTimestamp": "x"}, "status": {"phase": "Running"}}
                     ).phase == "Terminating"
    assert pod_state({"metadata": {"name": "p"}}).phase == "Pending"


def job(name: str, created: str, phase: str | None = None, priority: int = 0, pod_name: str | None = None,
        suspend: bool = False) -> dict[str, Any]:
    status = {k: v for k, v in {"phase": phase, "podName": pod_name}.items() if v}
    return {"metadata": {"name": name, "namespace": "ns", "creationTimestamp": created},
            "spec": {"priority": priority, "suspend": suspend}, "status": status}


def test_queue_orders_by_priority_then_creation_and_counts_free_slots() -> None:
    tjs = [job("old", "2026-01-01T00:00:01Z"), job("new", "2026-01-01T00:00:03Z"),
           job("urgent", "2026-01-01T00:00:05Z", priority=10), job("running", "2026-01-01T00:00:00Z", "Running",
                                                                   pod_name="running-a1"),
           job("done", "2026-01-01T00:00:00Z", "Succeeded"), job("paused", "2026-01-01T00:00:00Z", suspend=True),
           job("queued", "2026-01-01T00:00:02Z", "Queued")]
    assert [queue.key(t)[1] for t in queue.waiting(tjs)] == ["urgent", "old", "queued", "new"]
    assert queue.admissible(tjs, 1) == []
    assert queue.admissible(tjs, 3) == [("ns", "urgent"), ("ns", "old")]
    assert queue.position(tjs, ("ns", "new")) == 4
    # A job whose pod exists although its status does not say so (a restart lost the write) holds a slot.
    owned = lambda job: [{"kind": "TrainingJob", "name": job, "controller": True}]  # noqa: E731
    pods_ = [{"metadata": {"namespace": "ns", "name": "old-a1", "ownerReferences": owned("old")},
              "status": {"phase": "Running"}},
             {"metadata": {"namespace": "ns", "name": "done-a1", "ownerReferences": owned("done")},
              "status": {"phase": "Succeeded"}}]
    seen = queue.pod_view(pods_)
    assert seen == queue.Pods(owners={("ns", "old")}, succeeded={("ns", "done-a1")})
    assert queue.admissible(tjs, 3, seen) == [("ns", "urgent")]
    # A running job whose pod has Succeeded holds no slot while its completion (result, Adapter, status) runs.
    finished = queue.Pods(set(), {("ns", "running-a1")})
    assert queue.busy(tjs, finished) == set() and queue.admissible(tjs, 1, finished) == [("ns", "urgent")]
    assert queue.phases(tjs) == {"Pending": 4, "Running": 1, "Succeeded": 1, "Queued": 1}


class LookupOnly(dict):  # type: ignore[type-arg]
    """An index that may be looked up by key, never iterated (what a queue decision may do with finished jobs and
    pods: there are ever more of them)."""

    def __iter__(self) -> Any:
        raise AssertionError("a finished-objects index was iterated")

    keys = values = items = __iter__


def test_a_queue_decision_looks_finished_pods_up_and_counts_finished_jobs_without_listing_them() -> None:
    state = queue.Indexed()
    running = job("running", "2026-01-01T00:00:00Z", "Running", pod_name="running-a1")
    waiting = job("waiting", "2026-01-01T00:00:01Z", "Queued")
    finished = LookupOnly({("ns", f"done-{i}-a1"): [("Succeeded", f"uid-{i}")] for i in range(1000)})
    unfinished: dict[Any, Any] = {("ns", "running"): ["uid-r"]}
    state.attach({"trainingjob_index": {queue.key(t): [queue.summary(t)] for t in (running, waiting)},
                  "trainingjob_phase_index": {"Running": [None], "Queued": [None], "Succeeded": [None] * 1000},
                  "unfinished_pod_index": unfinished, "finished_pod_index": finished})
    assert queue.admissible(state.jobs(), 1, state.pods()) == []  # running's pod runs
    del unfinished["ns", "running"]
    finished["ns", "running-a1"] = [("Succeeded", "uid-r")]
    assert queue.admissible(state.jobs(), 1, state.pods()) == [("ns", "waiting")]  # it Succeeded: the slot is free
    assert state.phases() == {"Running": 1, "Queued": 1, "Succeeded": 1000}
    # A pod this process just created is busy until the pod indexes show it, then as they show it.
    state.created({"metadata": {"namespace": "ns", "name": "waiting-a1", "uid": "uid-w", "ownerReferences": [
        {"kind": "TrainingJob", "name": "waiting", "controller": True}]}, "status": {"phase": "Pending"}})
    assert state.pods().owners == {("ns", "waiting")}
    finished["ns", "waiting-a1"] = [("Succeeded", "uid-w")]
    assert state.pods().owners == set()


def test_conditions_move_transition_time_only_on_flips(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunewright_operator import status

    monkeypatch.setattr(status, "now", lambda: "T1")
    first = set_condition(None, "Admitted", False, "WaitingForSlot", "1 in queue")
    monkeypatch.setattr(status, "now", lambda: "T2")
    same = set_condition(first, "Admitted", False, "WaitingForSlot", "2 in queue")
    flipped = set_condition(same, "Admitted", True, "SlotAssigned")
    assert same[0]["lastTransitionTime"] == "T1" and same[0]["message"] == "2 in queue"
    assert flipped == [{"type": "Admitted", "status": "True", "reason": "SlotAssigned", "message": "",
                        "lastTransitionTime": "T2"}]


def test_settings_from_flags_and_environment() -> None:
    env = {"TUNEWRIGHT_MAX_CONCURRENT_JOBS": "4", "TUNEWRIGHT_NAMESPACES": "a, b", "TUNEWRIGHT_IMAGE": "img:2"}
    settings = Settings.parse(["--poll-seconds", "2.5"], env)
    assert (settings.max_concurrent_jobs, settings.namespaces, settings.image, settings.poll_seconds) == (
        4, ("a", "b"), "img:2", 2.5)
    assert Settings.parse(["--namespace", "x", "--max-concurrent-jobs", "2"], env).namespaces == ("x",)
    with pytest.raises(SystemExit):
        Settings.parse(["--max-concurrent-jobs", "0"], {})


def test_gpu_placement_settings_are_json_checked_like_a_job_spec(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"TUNEWRIGHT_GPU_NODE_SELECTOR": '{"accelerator": "a100"}',
           "TUNEWRIGHT_GPU_TOLERATIONS": '[{"key": "pool", "operator": "Equal", "value": "train", '
                                         '"effect": "NoExecute"}]'}
    settings = Settings.parse([], env)
    assert (settings.gpu_node_selector, settings.gpu_tolerations) == ({"accelerator": "a100"}, (POOL_TAINT,))
    assert Settings.parse([], {}).gpu_tolerations == (GPU_TAINT,) and Settings.parse([], {}).gpu_node_selector == {}
    assert Settings.parse([], {"TUNEWRIGHT_GPU_TOLERATIONS": "[]"}).gpu_tolerations == ()
    assert Settings.parse(["--gpu-node-selector", '{"a": "b"}'], env).gpu_node_selector == {"a": "b"}
    for variable, text, problem in [
        ("TUNEWRIGHT_GPU_TOLERATIONS", "[{key: x}]", "not valid JSON"),
        ("TUNEWRIGHT_GPU_TOLERATIONS", '[{"key": "x", "operator": "Maybe"}]', "tolerations.0.operator"),
        ("TUNEWRIGHT_GPU_TOLERATIONS", '{"key": "x"}', 'tolerations = {"key": "x"}: must be a list'),
        ("TUNEWRIGHT_GPU_NODE_SELECTOR", '{"gpus": 1}', "nodeSelector.gpus = 1"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            Settings.parse([], {variable: text})
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"error: {variable}: " in err and problem in err, err
    with pytest.raises(SystemExit):
        Settings.parse(["--gpu-tolerations", "nope"], {})
    assert "argument --gpu-tolerations: not valid JSON" in capsys.readouterr().err


def trainer_pod(name: str, attempt: int, phase: str = "Running", deleted: bool = False, grace: int | None = None,
                given: int | None = None, owner: str = "uid-1") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"tunewright.dev/trainingjob": "tune",
                                                     "tunewright.dev/attempt": str(attempt)},
                            "ownerReferences": [{"kind": "TrainingJob", "name": "tune", "uid": owner}]}
    if deleted:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    if given is not None:
        meta["deletionGracePeriodSeconds"] = given
    spec = {} if grace is None else {"terminationGracePeriodSeconds": grace}
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


def test_the_next_attempt_is_held_by_earlier_pods_that_terminate_or_still_run() -> None:
    found = [trainer_pod("tune-a1", 1, "Failed"),  # finished and kept for its logs: holds nothing
             trainer_pod("tune-a2-1", 2, "Failed", deleted=True),  # exited but still in the API
             trainer_pod("tune-a2-0", 2, "Running", deleted=True),  # committing its SIGTERM checkpoint
             trainer_pod("tune-a3-0", 3, "Running"),  # a leftover nobody deleted yet
             trainer_pod("tune-a4-0", 4, "Pending")]  # the attempt being started
    assert [p["metadata"]["name"] for p in handover.blocking(found, 4, "uid-1")] == \
        ["tune-a2-0", "tune-a2-1", "tune-a3-0"]
    assert handover.blocking(found, 2, "uid-1") == [] and handover.blocking([], 4, "uid-1") == []
    # A TrainingJob deleted and created again under its name: all the old one's pods hold its first attempt.
    assert [p["metadata"]["name"] for p in handover.blocking(found, 1, "uid-2")] == \
        ["tune-a1", "tune-a2-0", "tune-a2-1", "tune-a3-0", "tune-a4-0"]
    assert handover.grace_seconds([trainer_pod("a", 1, grace=300), trainer_pod("b", 1, grace=300, given=0)]) == 300
    assert handover.grace_seconds([trainer_pod("a", 1, grace=300, given=600)]) == 600
    assert handover.grace_seconds([trainer_pod("a", 1)]) == 30  # Kubernetes' default
    # Meanwhile the job keeps its slot: Running without a pod name is busy, not waiting in the queue.
    waiting_job = job("tune", "2026-01-01T00:00:00Z", "Running")
    assert queue.busy([waiting_job]) == {("ns", "tune")} and queue.waiting([waiting_job]) == []


def test_the_wait_turns_stuck_after_grace_plus_margin_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunewright_operator import status

    clock = ["2026-01-01T00:00:00Z"]
    monkeypatch.setattr(status, "now", lambda: clock[0])
    monkeypatch.setattr(handover, "now", lambda: clock[0])
    conditions, message, stuck = handover.waiting(None, ["tune-a1-0"], 2, grace=300, margin=60)
    assert not stuck and conditions[0]["reason"] == "WaitingForPreviousAttempt"
    assert message.startswith("attempt 2 waits for pod tune-a1-0 of an earlier attempt to terminate")
    clock[0] = "2026-01-01T00:06:00Z"  # 360 s: not beyond 300 + 60
    conditions, _, stuck = handover.waiting(conditions, ["tune-a1-0"], 2, grace=300, margin=60)
    assert not stuck and conditions[0]["reason"] == "WaitingForPreviousAttempt"
    clock[0] = "2026-01-01T00:06:01Z"
    conditions, message, stuck = handover.waiting(conditions, ["tune-a1-0", "tune-a1-1"], 2, grace=300, margin=60)
    assert stuck and conditions[0]["reason"] == "PodsStuckTerminating" and "more than 360 s" in message
    assert "--force tune-a1-0 tune-a1-1" in message
    assert conditions[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"  # the wait's start, kept
    clock[0] = "2026-01-01T00:09:00Z"
    conditions, _, stuck = handover.waiting(conditions, ["tune-a1-0"], 2, grace=300, margin=60)
    assert not stuck and conditions[0]["reason"] == "PodsStuckTerminating"  # reported (and an Event) once
    done = handover.gone(conditions)
    assert (done[0]["status"], done[0]["reason"]) == ("True", "PodsGone")
    # A later wait starts its own clock.
    clock[0] = "2026-01-01T01:00:00Z"
    conditions, _, stuck = handover.waiting(done, ["tune-a2-0"], 3, grace=300, margin=60)
    assert not stuck and conditions[0]["lastTransitionTime"] == "2026-01-01T01:00:00Z"
    assert handover.gone(None) is None  # no condition for jobs that never waited


def test_a_deleted_pod_ends_a_multinode_attempt() -> None:
    deleted = trainer_pod("tune-a1-1", 1, "Running", deleted=True)
    state = multinode.attempt_state({"tune-a1-0": trainer_pod("tune-a1-0", 1), "tune-a1-1": deleted})
    assert (state.phase, state.message) == ("Terminating", "pod tune-a1-1 was deleted")


@pytest.mark.parametrize(("err", "reason", "words"), [
    (NoCredentialsError(), "StorageCredentialsMissing", "set spec.storage.secretName"),
    (ClientError({"Error": {"Code": "AccessDenied", "Message": "denied"}}, "GetObject"), "StorageAccessDenied",
     "S3 GetObject: AccessDenied denied"),
    (EndpointConnectionError(endpoint_url="http://s3.example:9000"), "StorageUnreachable", "s3.example:9000"),
    (ApiException(status=403, reason="Forbidden"), "KubernetesError", "403 Forbidden"),
    (RuntimeError("boom"), "InternalError", "RuntimeError: boom"),
])
def test_every_failure_gets_a_reason_and_one_line(err: Exception, reason: str, words: str) -> None:
    got_reason, message = errors.describe(err)
    assert got_reason == reason and words in message and "\n" not in message


@pytest.mark.parametrize(("flags", "words"), [
    (["--allowed-images", "registry/*"], "argument --allowed-images: not valid JSON"),
    (["--allowed-images", '["", "x"]'], "argument --allowed-images: want a JSON list of strings"),
    (["--lease-seconds", "2"], "--lease-seconds must be >= 4"),
])
def test_bad_operator_flags_end_with_one_line(flags: list[str], words: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        Settings.parse(flags, environ={})
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and len(err.strip().splitlines()) == 1 and words in err


def test_storage_clients_are_shared_per_credentials_and_endpoint() -> None:
    from tunewright_operator import stores

    env = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": "http://127.0.0.1:1"}
    first = stores.s3_client(env)
    assert stores.s3_client(dict(env)) is first  # a Secret read again gives the same client
    rotated = stores.s3_client({**env, "AWS_SECRET_ACCESS_KEY": "t"})
    elsewhere = stores.s3_client({**env, "AWS_ENDPOINT_URL": "http://127.0.0.1:2"})
    assert rotated is not first and elsewhere is not first
    assert rotated._request_signer._credentials.secret_key == "t"
    assert elsewhere.meta.endpoint_url == "http://127.0.0.1:2"
