"""The statistics of an ablation: contrasts with CIs, claims, power, over the tidy frame.

``frame`` is the tidy results frame's schema (one line per trial x test subject (x AMS
sample); ``dashboards.tidy`` builds it from MLflow, ``ablate table NAME --format parquet``
writes it); ``analyse`` (``study``) turns it into effects, verdicts and variance shares, with
the estimator of ``estimates``, whose calibration ``calibration`` checks on synthetic studies.
"""

from ablate.analysis.study import Analysis, analyse

__all__ = ["Analysis", "analyse"]
