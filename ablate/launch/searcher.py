"""Optuna through Ray Tune, with early-stopped trials recorded honestly.

Ray's ``OptunaSearch`` tells the study COMPLETE for every trial that reported the metric,
including those ASHA stopped early, which poisons TPE (a half-trained score looks like a
final one) and importance plots. Our trainable marks its last report ``final=1``; a trial
that ends without it was stopped early and is told to the study as PRUNED.

Only the searcher's public interface is used: ``OptunaSearch.on_trial_complete`` tells the
study PRUNED for a trial that ended without a result and without an error, so an early-stopped
trial is passed on without its result (its intermediate values are already in the study).
``tests/integration/test_search_pruning.py`` fails if a Ray upgrade changes that rule.

Every Tune result of a trial is a validation (live progress goes to the driver's progress
board, :mod:`ablate.training.progress`, not through Tune, whose strict metric check and ASHA would
reject a result without the metric). The study records each as the intermediate value of its
validation round (``val_round``), and ASHA counts rounds (``time_attr="val_round"``).
"""

from __future__ import annotations

from typing import Any

from ray import tune
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from ablate.config import SearchParam


class PruningAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that records scheduler-stopped trials as PRUNED, not COMPLETE, and
    records validation results at their round."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        round_ = result.get("val_round", result.get(TRAINING_ITERATION))
        super().on_trial_result(trial_id, {**result, TRAINING_ITERATION: round_})

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        stopped_early = not error and bool(result) and result.get("final") != 1
        super().on_trial_complete(trial_id, None if stopped_early else result, error)


def optuna_distribution(param: SearchParam) -> Any:
    """A Ray Tune search-space entry for one declared knob (OptunaSearch converts it)."""
    if param.type == "loguniform":
        return tune.loguniform(param.low, param.high)
    if param.type == "uniform":
        return tune.uniform(param.low, param.high)
    if param.type == "int":
        return tune.randint(int(param.low), int(param.high) + 1)
    return tune.choice(list(param.values or []))
