"""One measurement in its own process: `python -m bench.child CASE PARAMS_JSON RESULT_PATH`.

CASE is `<module>.<function>` in bench (e.g. `dpo.trl`); the function gets the params and returns a JSON-able
dict, which is written to RESULT_PATH. Peak RSS is read by the parent (os.wait4), so it covers the whole
process: imports, model, data and training. A case whose figures are complete before its run ends may call
`finish(result)` instead of returning: what the run would do afterwards (a final checkpoint, publishing the
adapter) is no part of them and would only cost the bench's time.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
import warnings
from typing import Any, NoReturn

STARTED = time.perf_counter()
RESULT_PATH = ""


def _write(result: dict[str, Any]) -> None:
    with open(RESULT_PATH, "w") as fh:
        json.dump(result, fh)


def finish(result: dict[str, Any]) -> NoReturn:
    """Write `result` and end the process at once (its background threads with it). Its temporary files are
    under the directory bench.run gave it as TMPDIR, which bench.run removes."""
    _write(result)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main(argv: list[str]) -> int:
    global RESULT_PATH
    case, params, RESULT_PATH = argv
    sys.modules.setdefault("bench.child", sys.modules[__name__])  # run as __main__: one module, one RESULT_PATH
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    import bench.measure

    bench.measure.PROCESS_START = STARTED
    module_name, function = case.rsplit(".", 1)
    module = importlib.import_module(f"bench.{module_name}")
    _write(getattr(module, function)(json.loads(params)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
