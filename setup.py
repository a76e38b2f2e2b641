"""The one thing pyproject.toml cannot say: two folders of the repository's layout ship inside
the wheel as package data of ``ablate`` (``search_spaces/`` as ``ablate.search_spaces``,
``benchmarks/results/`` as ``ablate.benchmark_records``), so the CLI reads them through
``importlib.resources`` from a wheel and from an editable clone alike (ablate/shipped.py)."""

from setuptools import find_packages, setup

SHIPPED = {
    "ablate.search_spaces": "search_spaces",
    "ablate.benchmark_records": "benchmarks/results",
}

setup(
    packages=find_packages(include=["ablate*", "trainables*", "dashboards*"]) + list(SHIPPED),
    package_dir=SHIPPED,
    package_data={
        "dashboards": ["templates/*", "assets/*"],
        "ablate.search_spaces": ["*.yaml"],
        "ablate.benchmark_records": ["*.json", "*.md"],
    },
)
