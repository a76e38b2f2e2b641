"""A table you can trust, run as a user runs it (the ``ablate`` CLI in a fresh folder, an
embedded Ray, the sqlite store): what a line, a table and a registered model stand for.

- Two launches of one YAML in one folder (``--rows sr3,cpm --name noisy``, then
  ``--rows cpm --name concurrent``): ``ablate table noisy`` lists SR3 first and tests
  against SR3, the YAML's first row, whichever launch started last.
- The second launch is on other data (a second simulated dataset, imported by path): it
  leaves ``ablate table NAME`` and ``models:/NAME-best@champion`` exactly as they were:
  the trials are tagged with their dataset, ``ablate export`` asks which dataset, and the
  other dataset's model is registered under a name of its own, tagged with its data.
- ``reference: nope`` is a one-line error before anything is created.
"""

from __future__ import annotations

import csv
import io
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow import MlflowClient

from ablate import tracking
from ablate.workspace import default_tracking_uri
from tests.conftest import tiny_experiment

pytestmark = pytest.mark.slow

NAME = "ident"


def _ablate(args: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ablate", *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    if ok:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def _space(folder: Path, **extra: object) -> Path:
    rows = {
        "sr3": {"method": "sr3", "label": "(a) SR3"},
        "cpm": {"method": "coarse_to_fine", "label": "(b) CPM"},
    }
    raw = tiny_experiment(NAME, rows, **extra)
    raw["resources"] = {"cpu": 1, "max_concurrent": 2}
    path = folder / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _champion(folder: Path, model: str) -> str:
    client = MlflowClient(default_tracking_uri(folder / "runs"))
    return str(client.get_model_version_by_alias(model, "champion").version)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A fresh folder, two launches of one YAML: ``noisy`` (sr3, cpm on the YAML's simulated
    data), its table and export taken, then ``concurrent`` (cpm on a second simulated
    dataset, imported by path), which started last. One after the other, so the later start
    is certain: the order of starts is what used to reorder a table, and the other data what
    used to change it. (Two launches, not three: each costs a minute of Ray start here.)"""
    cwd = tmp_path_factory.mktemp("identity")
    space = _space(cwd)
    _ablate(["run", str(space), "--rows", "sr3,cpm", "--seeds", "1", "--name", "noisy"], cwd)
    before = _ablate(["table", NAME, "--format", "md"], cwd).stdout
    _ablate(["export", NAME], cwd)
    version = _champion(cwd, f"{NAME}-best")
    _ablate(["data", "simulate", "--out", "other", "--seed", "1"], cwd)
    concurrent = ["--rows", "cpm", "--seeds", "1", "--name", "concurrent"]
    _ablate(["run", str(space), "data.path=other", *concurrent], cwd)
    return SimpleNamespace(folder=cwd, before=before, version=version)


def _csv_lines(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_row_order_and_reference_are_the_yamls(study: SimpleNamespace) -> None:
    table = _ablate(["table", "noisy", "--format", "csv"], study.folder).stdout
    head, *lines = _csv_lines(table)
    # the low-dose input's line first (not a row of the YAML), then the YAML's rows in order
    assert lines[0][head.index("line")] == "input", table
    lines = lines[1:]
    rows = [line[head.index("row")] for line in lines]
    tests = [line[head.index("test")] for line in lines]
    assert rows == ["sr3", "cpm"], table
    assert tests[0] == "reference" and tests[1].endswith(" slices"), table
    md = _ablate(["table", "noisy", "--format", "md"], study.folder).stdout
    assert "against 'sr3'" in md and md.index("(a) SR3") < md.index("(b) CPM"), md
    # --reference overrides the YAML's
    md = _ablate(["table", "noisy", "--format", "md", "--reference", "cpm"], study.folder).stdout
    assert "against 'cpm'" in md, md


def test_other_data_leaves_table_and_champion_as_they_were(study: SimpleNamespace) -> None:
    folder = study.folder
    after = _ablate(["table", NAME, "--format", "md"], folder)
    assert after.stdout == study.before
    assert "on dataset 'tiny-seed0'" in after.stdout
    assert "--data other" in after.stderr  # said beside the table, not in it
    other = _ablate(["table", NAME, "--format", "md", "--data", "other"], folder).stdout
    assert "on dataset 'other'" in other and "(b) CPM | 1/1" in other, other
    assert "(a) SR3" not in other and "replaces" not in other, other
    # the launch's own table has no reference row: tested against its first, and says so
    assert "reference row 'sr3' is not in this table" in other

    asked = _ablate(["export", NAME], folder, ok=False)
    assert asked.returncode == 2 and len(asked.stderr.strip().splitlines()) == 1, asked.stderr
    assert "2 datasets: tiny-seed0" in asked.stderr and "other (sha" in asked.stderr
    assert "--data" in asked.stderr
    again = _ablate(["export", NAME, "--data", "tiny-seed0"], folder).stdout
    version = study.version
    assert f"{NAME}-best@champion = version {version} (unchanged" in " ".join(again.split())
    assert _champion(folder, f"{NAME}-best") == version

    _ablate(["export", NAME, "--data", "other"], folder)
    client = MlflowClient(default_tracking_uri(folder / "runs"))
    mine = client.get_model_version_by_alias(f"{NAME}-best", "champion")
    theirs = client.get_model_version_by_alias(f"{NAME}-other-best", "champion")
    assert mine.tags[tracking.TAG_DATASET] == "tiny-seed0"
    assert theirs.tags[tracking.TAG_DATASET] == "other"
    assert mine.tags[tracking.TAG_DATASET_SHA256] != theirs.tags[tracking.TAG_DATASET_SHA256]
    registered = client.get_registered_model(f"{NAME}-other-best")
    assert registered.tags[tracking.TAG_DATASET] == "other"
    # a name holding one dataset's models refuses another's
    taken = _ablate(
        ["export", NAME, "--data", "other", "--model-name", f"{NAME}-best"], folder, ok=False
    )
    assert taken.returncode == 2 and "trained on dataset 'tiny-seed0'" in taken.stderr
    assert _champion(folder, f"{NAME}-best") == version


def test_reference_naming_no_row_is_a_one_line_error(tmp_path: Path) -> None:
    space = _space(tmp_path, reference="nope")
    done = _ablate(["run", str(space)], tmp_path, ok=False)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "reference 'nope' is not a row" in lines[0], done.stderr
    assert "sr3, cpm" in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing launched, nothing created
