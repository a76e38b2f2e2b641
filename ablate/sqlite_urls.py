"""SQLAlchemy sqlite URLs (``sqlite:////abs/path.db``), made and read in one place.

MLflow's embedded store and Optuna's default study database are sqlite files named by URL.
Several commands must know the file behind a URL without opening it (opening creates an
empty database), so the prefix is parsed here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "sqlite:///"


def sqlite_url(path: Path) -> str:
    """The URL of the sqlite file at ``path`` (made absolute: a relative URL would depend on
    the directory each process starts in)."""
    return f"{PREFIX}{Path(path).resolve()}"


def sqlite_file(url: str) -> Path | None:
    """The file behind a sqlite URL, or None for any other store (a server, a journal)."""
    return Path(url.removeprefix(PREFIX)) if url.startswith(PREFIX) else None
