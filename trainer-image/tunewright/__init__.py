"""tunewright: train LoRA adapters from human-rated samples (trainer side, plus the shared records)."""

__version__ = "0.1.0"
