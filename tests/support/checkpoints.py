"""Helpers for checkpoint tests (a plain module, not a plugin): fake trainer checkpoint directories."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path


def make_checkpoint_dir(parent: Path, step: int, sizes: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A directory shaped like an HF Trainer checkpoint, filled with random bytes (seeded by step+seed)."""
    local = parent / f"checkpoint-{step}"
    rng = random.Random(step * 1000 + seed)
    sizes = sizes or {"adapter_model.safetensors": 4096, "optimizer.pt": 8192, "rng/rng_state.pth": 100}
    for name, size in sizes.items():
        path = local / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    (local / "trainer_state.json").write_text(json.dumps({"global_step": step, "seed": seed}))
    return local


def digests(local: Path) -> dict[str, str]:
    """sha256 of every file under `local` (relative posix path -> hex), manifest excluded."""
    return {p.relative_to(local).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(local.rglob("*")) if p.is_file() and p.name != "manifest.json"}
