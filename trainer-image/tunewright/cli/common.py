"""What both CLIs share: one-line errors and a non-zero exit, the termination log Kubernetes reads; Ctrl-C
(exit 130) and SIGTERM outside the training loop (exit 1) end in one line too."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

# Errors a user can act on: printed as one line, no traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RuntimeError, OSError)


def fail(message: str, code: int = 1) -> int:
    line = " ".join(message.split())
    print(f"error: {line}", file=sys.stderr)
    log = os.environ.get("TUNEWRIGHT_TERMINATION_LOG")
    if log:
        with contextlib.suppress(OSError):
            Path(log).write_text(line[:4000])  # the kubelet keeps at most 4096 bytes
    return code


class Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (argparse prints the usage block first)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        fail(f"{self.prog}: {message} (see {self.prog} --help)", 2)
        raise SystemExit(2)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (which checkpoints on it instead). It unwinds like Ctrl-C, so that
    a write in progress removes its temp file and a run marks itself failed before the one-line exit. Exit
    code 1, not 143: 143 says a checkpoint was committed (see tunewright.training.run)."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated("terminated (SIGTERM)")


def run_cli(body: Callable[[], int]) -> int:
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return body()
    except Terminated as err:
        return fail(str(err), 1)
    except KeyboardInterrupt:
        return fail("interrupted (SIGINT)", 130)
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as a shell tool does
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except USER_ERRORS as err:
        if os.environ.get("TUNEWRIGHT_DEBUG"):
            raise
        return fail(f"{type(err).__name__}: {err}" if not str(err) else str(err))
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
