"""One measurement in its own process: `python -m bench.child CASE PARAMS_JSON RESULT_PATH`.

CASE is `<module>.<function>` in bench (e.g. `dpo.trl`); the function gets the params and returns a JSON-able
dict, which is written to RESULT_PATH. Peak RSS is read by the parent (os.wait4), so it covers the whole
process: imports, model, data and training.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import time
import warnings

STARTED = time.perf_counter()


def main(argv: list[str]) -> int:
    case, params, result_path = argv
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")
    import bench.measure

    bench.measure.PROCESS_START = STARTED
    module_name, function = case.rsplit(".", 1)
    module = importlib.import_module(f"bench.{module_name}")
    result = getattr(module, function)(json.loads(params))
    with open(result_path, "w") as fh:
        json.dump(result, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
