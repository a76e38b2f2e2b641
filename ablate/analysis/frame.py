"""The tidy results frame: every test metric per trial, per test subject and per AMS sample.

One line per (trial, ``level``): ``level`` says what a line holds.

- ``trial``: one per trial (any status), its logged test metrics (``psnr`` ... ``sd``): the
  mean over test subjects. ``subject`` and ``sample`` are empty.
- ``subject``: one per completed trial x test subject, from the trial's
  ``test_subjects.parquet`` (the logged sample's metrics, ``ams_*`` when K > 1, ``input_*`` for
  the low-dose input, ``n_slices``).
- ``sample``: one per completed trial x test subject x AMS sample (K > 1), from
  ``test_samples.parquet``.

Columns, before the metrics: ``experiment, launch`` (the launch's name, else its parent run
id), ``parent_run_id, run_id, row, row_index, label, seed, fold, dataset, dataset_sha256,
reference, code_version, status, error, start_time, level, subject, sample, n_slices``.
``fold`` is a cross-validated trial's fold (empty: the dataset's own split): a subject is
tested in one fold per seed, so its subject lines pool across folds as they stand (the subject
is nested in its fold). Metric columns carry their MLflow names. The analysis
(``ablate.analysis.study``) reads subject lines where a metric has them, else trial lines (a
trial mean is the seed-level datum of the same test). The frame is self-contained: written as
Parquet, it is read back without the tracking store. This module owns the frame's schema;
``dashboards.tidy`` builds it from a study's MLflow runs (the core never reads MLflow's
reports layer).
"""

from __future__ import annotations

import pandas as pd

#: The columns of the tidy frame before the metric columns, in this order.
KEY_COLUMNS = [
    "experiment",
    "launch",
    "parent_run_id",
    "run_id",
    "row",
    "row_index",
    "label",
    "seed",
    "fold",
    "dataset",
    "dataset_sha256",
    "reference",
    "code_version",
    "status",
    "error",
    "start_time",
    "level",
    "subject",
    "sample",
    "n_slices",
]
#: The per-trial artifacts the subject and sample lines come from (written by the trainable).
SUBJECTS_ARTIFACT = "test_subjects.parquet"
SAMPLES_ARTIFACT = "test_samples.parquet"
LEVELS = ("trial", "subject", "sample")


def is_tidy(df: pd.DataFrame) -> bool:
    """Whether a frame read from Parquet is a tidy frame (else a results frame)."""
    return "level" in df.columns and "subject" in df.columns
