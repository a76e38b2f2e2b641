"""The statistics of an ablation: the tidy results frame, contrasts with CIs, claims, power.

``tidy_frame`` (``frame``) builds one frame of every test metric per trial x subject (x AMS
sample); ``analyse`` (``study``) turns it into effects, verdicts and variance shares, with the
estimator of ``estimates``, whose calibration ``calibration`` checks on synthetic studies.
"""

from ablate.analysis.frame import tidy_frame
from ablate.analysis.study import Analysis, analyse

__all__ = ["Analysis", "analyse", "tidy_frame"]
