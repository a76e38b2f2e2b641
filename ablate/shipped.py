"""What ships inside the wheel beside the code: the search spaces (``search_spaces/`` in the
repository) and the benchmark records the planner reads (``benchmarks/results/``).

Both are package data of ``ablate`` (``ablate.search_spaces``, ``ablate.benchmark_records``:
setup.py maps the repository folders onto them), read through ``importlib.resources``, so
``pip install ablate-pet`` runs ``ablate demo`` and ``ablate plan`` from an empty folder and an
editable clone reads the very files a user edits. This module is the one owner of where they are.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

#: The distribution's name on PyPI (``ablate`` there is an unrelated project); the command
#: and the import name stay ``ablate``.
DISTRIBUTION = "ablate-pet"


#: Where each resource package lives in the repository (setup.py maps the same folders).
_IN_REPOSITORY = {
    "ablate.search_spaces": "search_spaces",
    "ablate.benchmark_records": "benchmarks/results",
}


def _folder(package: str) -> Path:
    try:  # installed (a wheel, or an editable install's mapping): real files in either case
        return Path(str(files(package)))
    except ModuleNotFoundError:  # a source tree imported without an install (pytest's rootdir)
        return Path(__file__).resolve().parents[1] / _IN_REPOSITORY[package]


def search_spaces_dir() -> Path:
    """The folder of the shipped search-space YAMLs."""
    return _folder("ablate.search_spaces")


def benchmark_records_dir() -> Path:
    """The folder of the shipped benchmark records (``*.json``) that ``ablate plan`` reads."""
    return _folder("ablate.benchmark_records")


def shipped_space(name: str) -> Path | None:
    """The shipped YAML that ``name`` names (``paper_table2.yaml``, ``paper_table2``), or None."""
    stem = Path(name).name.removesuffix(".yaml")
    path = search_spaces_dir() / f"{stem}.yaml"
    return path if path.is_file() else None


def shipped_space_names() -> list[str]:
    """The shipped search spaces' file names, for error messages."""
    return sorted(p.name for p in search_spaces_dir().glob("*.yaml"))
