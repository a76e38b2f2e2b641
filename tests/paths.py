"""The repository's root, for tests at any depth of ``tests/``."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
