"""A stack sampler for a Python process that cannot be profiled from outside (py-spy and yappi are not installed).

`start(path)` starts a daemon thread that every `interval` seconds reads every other thread's stack
(sys._current_frames) and its CPU time (its thread CPU clock, ns), and charges the CPU time the thread used since
the previous sample to its current stack: threads that wait cost nothing, so the figures are CPU, not wall time
(work done just before a thread blocks is charged to where it blocks: keep `interval` short). Every few seconds
it rewrites `path` with one line per distinct stack, `microseconds frame;frame;...` (root first, frames as
`file:function`), so a process killed with SIGKILL leaves what it had. Stdlib only: it runs inside the
profiled process, started from a sitecustomize module (bench.operator_scale --profile).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from types import FrameType

DEPTH = 60


def _cpu_us(ident: int) -> int:
    try:
        return int(time.clock_gettime(time.pthread_getcpuclockid(ident)) * 1e6)
    except (OSError, ProcessLookupError):  # the thread ended meanwhile
        return 0


def _stack(frame: FrameType | None) -> str:
    names = []
    while frame is not None and len(names) < DEPTH:
        code = frame.f_code
        names.append(f"{Path(code.co_filename).name}:{code.co_name}")
        frame = frame.f_back
    return ";".join(reversed(names))


def _run(path: Path, interval: float, flush_every: float) -> None:
    me = threading.get_ident()
    last: dict[int, int] = {}
    stacks: Counter[str] = Counter()
    flushed = time.monotonic()
    while True:
        time.sleep(interval)
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            cpu = _cpu_us(ident)
            used, last[ident] = cpu - last.get(ident, cpu), cpu
            if used > 0:
                stacks[_stack(frame)] += used
        if time.monotonic() - flushed > flush_every:
            flushed = time.monotonic()
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(f"{n} {s}\n" for s, n in stacks.most_common()))
            os.replace(tmp, path)


def start(path: str | Path, interval: float = 0.005, flush_every: float = 2.0) -> None:
    threading.Thread(target=_run, args=(Path(path), interval, flush_every), name="stack-sampler",
                     daemon=True).start()


def summary(files: list[Path], top: int = 25) -> str:
    """The functions with the most CPU time of their own (self) and including what they call (total), as shares
    of all sampled CPU time, from the files `start` wrote."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for file in files:
        for line in file.read_text().splitlines():
            count, stack = line.split(" ", 1)
            frames = stack.split(";")
            own[frames[-1]] += int(count)
            for frame in set(frames):
                total[frame] += int(count)
    ticks = sum(own.values()) or 1
    lines = [f"{ticks / 1e6:.1f} s of CPU sampled", "self:"]
    lines += [f"  {100 * n / ticks:5.1f} %  {name}" for name, n in own.most_common(top)]
    lines.append("total (the function and what it calls):")
    lines += [f"  {100 * n / ticks:5.1f} %  {name}" for name, n in total.most_common(top)]
    return "\n".join(lines)
