"""bench/stack_sampler.py (bench-operator --profile): CPU goes to the stack that used it, not to threads
that wait."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SUPPORT = Path(__file__).resolve().parents[2] / "bench"  # the sampler's directory, as a sitecustomize sees it
sys.path.insert(0, str(SUPPORT.parent))

from bench import stack_sampler  # noqa: E402

PROFILED = """
import sys, threading, time
sys.path.insert(0, {support!r})
import stack_sampler
stack_sampler.start({out!r}, flush_every=0.1)

def spin():
    end = time.thread_time() + 0.6
    while time.thread_time() < end:
        sum(range(1000))

def idle():
    time.sleep(1.0)

threads = [threading.Thread(target=spin), threading.Thread(target=idle)]
for t in threads:
    t.start()
for t in threads:
    t.join()
time.sleep(0.3)  # a flush after the work
"""


def test_cpu_is_charged_to_the_busy_stack_and_none_to_the_waiting_one(tmp_path: Path) -> None:
    out = tmp_path / "stacks.txt"
    subprocess.run([sys.executable, "-c", PROFILED.format(support=str(SUPPORT), out=str(out))], check=True,
                   timeout=30)
    stacks = {line.split(" ", 1)[1]: int(line.split(" ", 1)[0]) for line in out.read_text().splitlines()}
    spin = sum(us for stack, us in stacks.items() if "<string>:spin" in stack)
    idle = sum(us for stack, us in stacks.items() if "<string>:idle" in stack)
    assert 0.4e6 < spin <= 0.7e6, stacks  # ~0.6 s of the spinning thread's CPU
    assert idle < 0.02e6, stacks
    summary = stack_sampler.summary([out]).splitlines()
    assert summary[1] == "self:" and summary[2].endswith("<string>:spin"), summary  # the most CPU of its own
