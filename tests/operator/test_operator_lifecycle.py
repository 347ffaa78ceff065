"""TrainingJob lifecycles end to end: the real operator, the emulated API server, pods run by the test kubelet."""

from __future__ import annotations

from typing import Any

SPEC: dict[str, Any] = {"dataset": {"id": "songs"}, "training": {"maxSteps": 12},
                        "checkpointing": {"everySteps": 4}}


def test_happy_path_with_standin(k8s, store, operator_factory, kubelet_factory):
    kubelet_factory()
    operator_factory()
    k8s.create("trainingjobs", "job1", SPEC)
    status = k8s.wait_phase("job1", "Succeeded", timeout=30)
    print(status)
    assert status["adapterRef"]["name"] == "songs-sft-v1"
    adapter = k8s.get("adapters", "songs-sft-v1")
    print(adapter)
    assert adapter["status"]["phase"] == "Ready"
