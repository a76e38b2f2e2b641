"""Calibration of the table's statistics on synthetic studies with known answers.

For 3 and 5 training seeds x 4 and 20 test subjects, ``--studies`` synthetic ablations (4 rows,
seed, subject, seed x row, subject x row, slice and noise variance; true effects +0.4, +0.3,
+0.6 dB between adjacent rows; see ``ablate.analysis.calibration``) are analysed by the
platform's estimator and by a slice-level paired t-test. Printed and written to
``benchmarks/results/calibration.json``: the 95% CI coverage of the true effects (target
93-97%) and, under null effects, the Holm-corrected family-wise false-positive rate (target
<= 5% +- 2%), plus the same two figures at other variance mixes (``--designs``) to show where
the method is conservative.

    python benchmarks/calibration.py            # 1000 studies per cell, ~10 s
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from ablate.analysis.calibration import Design, calibrate

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: Variance mixes beyond the default (seed x row dominated, as in benchmarks/toy_study.py).
DESIGNS = {
    "default": Design(),
    "subjects dominate": Design(seed_row=0.2, subject_row=0.8),
    "noise dominates": Design(seed_row=0.05, subject_row=0.05, noise=2.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=RESULTS / "calibration.json")
    args = parser.parse_args()
    start = time.perf_counter()
    rows = []
    for name, design in DESIGNS.items():
        for seeds in (3, 5):
            for subjects in (4, 20):
                result = calibrate(seeds, subjects, args.studies, design, 10 * seeds + subjects)
                rows.append({"design": name, **asdict(result)})
    took = time.perf_counter() - start
    print(f"{args.studies} synthetic studies per cell ({took:.1f} s); targets: coverage 93-97%,")
    print("Holm FWER <= 7%. Platform: crossed seed x subject paired t (union of intervals).")
    print(f"{'design':18} {'seeds':>5} {'subj':>4} | {'coverage':>8} {'FWER':>6} | slice t-test:")
    print(f"{'':18} {'':>5} {'':>4} | {'':>8} {'':>6} | {'coverage':>8} {'FWER':>6}")
    for r in rows:
        print(
            f"{r['design']:18} {r['seeds']:5d} {r['subjects']:4d} | {r['coverage']:8.1%} "
            f"{r['fwer']:6.1%} | {r['slice_coverage']:8.1%} {r['slice_fwer']:6.1%}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    designs = {name: asdict(d) for name, d in DESIGNS.items()}
    payload = {"studies": args.studies, "seconds": took, "designs": designs, "results": rows}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
