"""The committed pilot ``ablate plan --power`` reads when no ``--pilot`` is named.

``benchmarks/toy_study.py`` trained the demo's six rows at 3000 steps on 3 seeds
(``benchmarks/results/toy_study.json``). This keeps their per-seed test metrics (trial means
over the ``tiny`` preset's 2 test subjects: the toy study logged no per-subject metrics) in
the shape ``ablate.analysis.power.frame_from_record`` reads. The seed-level SD of a contrast
of these rows is 0.16-1.75 dB of PSNR ((f) - SR3: 1.75 dB), a row's pooled seed x row
variance 0.53 dB^2.

    python benchmarks/pilot_record.py       # instant; rerun after toy_study.py

Writes ``benchmarks/results/pilot-demo.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ROWS = ("sr3", "cpm", "cpm_irm", "cpm_irm_nas", "cpm_irm_nas_spec", "full")
METRICS = ("psnr", "ssim", "nmse")


def main() -> None:
    study = json.loads((RESULTS / "toy_study.json").read_text())
    seeds = sorted({t["seed"] for t in study["trials"] if t["row"] in ROWS})
    by = {(t["row"], t["seed"]): t["summary"] for t in study["trials"]}
    record = {
        "source": "benchmarks/toy_study.py (toy_study.json): search_spaces/demo.yaml's rows at "
        f"{study['settings']['steps']} steps, trial means over the tiny preset's 2 test subjects",
        "seeds": seeds,
        "trials": {row: {m: [by[(row, s)][m] for s in seeds] for m in METRICS} for row in ROWS},
    }
    out = RESULTS / "pilot-demo.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{len(ROWS)} rows x {len(seeds)} seeds -> {out}")


if __name__ == "__main__":
    main()
