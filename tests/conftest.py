"""Shared test setup. Area-specific fixtures live in tests/support/ and are loaded as plugins here."""

import os

# Tests never reach a hub; tiny models are built from configs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins: list[str] = ["support.helm", "support.s3", "support.trainer", "support.k8s"]
