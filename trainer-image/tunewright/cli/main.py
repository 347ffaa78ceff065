"""`tunewright`: manage datasets and registered adapters in a storage root."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from tunewright.cli.common import Parser, run_cli
from tunewright.data.rows import ROW_MODELS
from tunewright.data.store import DatasetStore
from tunewright.registry import Registry, RegistryError
from tunewright.storage import open_storage


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="tunewright", description=__doc__)
    p.add_argument("--storage", help="storage root URI (default $TUNEWRIGHT_STORAGE or file://./.tunewright)")
    sub = p.add_subparsers(dest="area", required=True)
    ds = sub.add_parser("dataset", help="import, list and show datasets").add_subparsers(dest="cmd", required=True)
    imp = ds.add_parser("import", help="validate and store a JSONL file under an id")
    imp.add_argument("id")
    imp.add_argument("file")
    imp.add_argument("--kind", required=True, choices=sorted(ROW_MODELS))
    imp.add_argument("--modality", default="text", choices=["text", "audio"])
    ds.add_parser("list")
    show = ds.add_parser("show")
    show.add_argument("id")
    ad = sub.add_parser("adapter", help="list and show registered adapters").add_subparsers(dest="cmd", required=True)
    ad.add_parser("list")
    ashow = ad.add_parser("show")
    ashow.add_argument("name")
    ashow.add_argument("--version", type=int)
    rep = sub.add_parser("report", help="(re)build an adapter's report.html and print its URI")
    rep.add_argument("adapter", metavar="ADAPTER[:VERSION]", help="adapter name, optionally :version (default latest)")
    return p


def adapter_ref(text: str) -> tuple[str, int | None]:
    name, sep, version = text.partition(":")
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise RegistryError(f"ADAPTER[:VERSION]: version must be a positive integer, got {version!r} in {text!r}")
    return name, int(version)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    return run_cli(lambda: dispatch(args))


def dispatch(args: argparse.Namespace) -> int:
    root = open_storage(args.storage)
    if args.area == "dataset":
        store = DatasetStore(root)
        if args.cmd == "import":
            meta = store.import_file(args.id, args.file, args.kind, args.modality)
            print(f"imported {meta.samples} {meta.kind} rows as {meta.id} ({meta.digest[:19]}) "
                  f"into {store.uri(meta.id)}")
        elif args.cmd == "list":
            for m in store.list():
                print(f"{m.id:30} {m.kind:10} {m.modality:6} {m.samples:7d}  {m.created}")
        else:
            print(store.meta(args.id).model_dump_json(indent=2))
        return 0
    registry = Registry(root)
    if args.area == "report":
        from tunewright.reporting.page import rebuild  # matplotlib: only this command needs it

        record = registry.get(*adapter_ref(args.adapter))
        print(rebuild(registry.version_dir(record.name, record.version)))
        return 0
    if args.cmd == "list":
        for r in registry.list():
            loss = f"{r.report.final_loss:.4f}" if r.report.final_loss is not None else "-"
            print(f"{r.name:30} v{r.version:<4} {r.method:8} {r.base_model:24} loss={loss}  {r.uri}")
    else:
        print(json.dumps(registry.get(args.name, args.version).to_dict(), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
