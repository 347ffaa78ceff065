"""What both CLIs share: one-line errors and a non-zero exit, the termination log Kubernetes reads."""

from __future__ import annotations

import contextlib
import os
import sys
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


def run_cli(body: Callable[[], int]) -> int:
    try:
        return body()
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except USER_ERRORS as err:
        if os.environ.get("TUNEWRIGHT_DEBUG"):
            raise
        return fail(f"{type(err).__name__}: {err}" if not str(err) else str(err))
