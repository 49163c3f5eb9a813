"""Whether a change of the code changed a result: the same experiments trained before and after it (same seed,
same flags), compared file by file: every summary.json field but the timings and the run's id, layers.json and
the model file byte for byte, and every logged loss and test PSNR in metrics.csv. Its results are the reshape
checks in docs/history/2026-12-01-reshape-checks.md. Train both sides first, the base in a worktree:

    git worktree add /tmp/base BASE_COMMIT && (cd /tmp/base && for e in exp1 exp4; do
      /path/to/.venv/bin/python $e.py --quick --wandb disabled --out /tmp/base_runs; done)
    for e in exp1 exp4; do .venv/bin/python $e.py --quick --wandb disabled --out /tmp/after_runs; done
    .venv/bin/python benchmarks/same_results.py /tmp/base_runs /tmp/after_runs exp1 exp4

Prints, per run, the summary fields that differ and the new ones, whether each file is byte-identical and
whether the losses and test PSNRs are equal; exits 1 when anything differs.
"""

import argparse
import csv
import filecmp
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rundir  # noqa: E402

# What differs between two runs of the same training on any machine: times, memory, the run's own id, and the
# commit of the code (two commits are what the script compares).
UNCOMPARED = {
    "commit",
    "wall_s",
    "train_s",
    "train_samples_per_s",
    "compile_s",
    "peak_mem_bytes",
    "peak_reserved_bytes",
    "run_id",
}


def compare(base: Path, after: Path, ignored: set[str]) -> tuple[bool, list[str]]:
    """(whether run `after` has the results of run `base`, the lines that say how)."""
    a, b = (json.loads((d / rundir.SUMMARY).read_text()) for d in (base, after))
    differs = sorted(k for k in a.keys() & b.keys() if k not in ignored and a[k] != b[k])
    lines = [
        f"summary.json differs in {differs or 'nothing'} | new keys {sorted(b.keys() - a.keys())}"
        f" | keys gone {sorted(a.keys() - b.keys())}"
    ]
    same = not differs
    model_files = [f for f in rundir.MODEL_FILES.values() if (base / f).exists()]
    for name in (rundir.LAYERS, *model_files):
        identical = (after / name).exists() and filecmp.cmp(base / name, after / name, shallow=False)
        lines.append(f"{name} byte-identical: {identical}")
        same = same and identical
    rows = []
    for d in (base, after):
        with open(d / rundir.METRICS, newline="") as f:
            rows.append([(r["step"], r["loss"], r["psnr_test"]) for r in csv.DictReader(f)])
    lines.append(f"metrics.csv losses and test PSNRs equal: {rows[0] == rows[1]}")
    return same and rows[0] == rows[1], lines


def main(argv: list[str] | None = None) -> bool:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="the runs folder trained before the change")
    parser.add_argument("after", type=Path, help="the runs folder trained after it")
    parser.add_argument("runs", nargs="+", help="the run names to compare (e.g. exp1 exp4)")
    parser.add_argument(
        "--ignore",
        nargs="*",
        default=sorted(UNCOMPARED),
        help=f"summary.json fields not compared (default: {' '.join(sorted(UNCOMPARED))})",
    )
    args = parser.parse_args(argv)
    all_same = True
    for name in args.runs:
        same, lines = compare(args.base / name, args.after / name, set(args.ignore))
        print(f"{name}: {'same results' if same else 'DIFFERENT'}")
        print("\n".join(f"  {line}" for line in lines))
        all_same = all_same and same
    return all_same


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
