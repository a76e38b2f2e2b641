"""Why adaptive replication tests each look at alpha over the planned looks.

``ablate run --until-resolved`` looks at a contrast after every seed wave and stops adding
seeds once it resolves. Stopping at the first look where p < alpha spends alpha at every
look: under a null effect, the chance that some look passes grows with the looks. This
simulates null paired contrasts (seed-level differences ~ N(0, 1)), tested by a one-sample
t-test after each wave, and prints the share of studies in which any look resolves the
contrast at the nominal level and at the level :mod:`ablate.analysis.replication` uses
(alpha / K, Bonferroni over the K planned looks: target <= alpha). Written to
``benchmarks/results/optional_stopping.json``.

    python benchmarks/optional_stopping.py          # 20,000 studies per schedule, ~2 s
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats

from ablate.analysis.replication import planned_looks

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
#: (seeds per wave, seed cap): the README's waves of 2 seeds to 10, and of 3 to 9.
SCHEDULES = [(2, 10), (3, 9), (2, 4)]


def false_resolutions(wave: int, cap: int, level: float, studies: int, seed: int) -> float:
    """Share of null studies in which some look's p is below ``level``."""
    rng = np.random.default_rng(seed)
    diffs = rng.normal(size=(studies, cap))
    hit = np.zeros(studies, dtype=bool)
    for n in range(wave, cap + 1, wave):
        hit |= stats.ttest_1samp(diffs[:, :n], 0.0, axis=1).pvalue < level
    return float(hit.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20_000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    print("seeds/wave  cap  looks  any look p<alpha  any look p<alpha/K")
    for wave, cap in SCHEDULES:
        looks = planned_looks(cap, wave)
        nominal = false_resolutions(wave, cap, args.alpha, args.studies, args.seed)
        corrected = false_resolutions(wave, cap, args.alpha / looks, args.studies, args.seed)
        rows.append(
            {"seeds_per_wave": wave, "max_seeds": cap, "looks": looks,
             "nominal": nominal, "bonferroni_over_looks": corrected}
        )  # fmt: skip
        print(f"{wave:>10}  {cap:>3}  {looks:>5}  {nominal:>16.3f}  {corrected:>18.3f}")
    out = RESULTS / "optional_stopping.json"
    settings = {"studies": args.studies, "alpha": args.alpha, "seed": args.seed}
    out.write_text(json.dumps({"settings": settings, "schedules": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
