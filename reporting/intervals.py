"""Seeds and intervals: each experiment's mean over its seeds with the 95% t interval, and its difference from
exp1 paired seed by seed, marked where the interval covers zero (stats.py)."""

import stats
from accel.results import NOT_EVALUATED, markdown_table
from reporting.runs import experiment_groups

# What the interval tables and the Pareto plot compare: summary field -> (label, decimals).
SEED_METRICS = {
    "psnr_test": ("test PSNR (dB)", 2),
    "ssim_test": ("test SSIM", 3),
    "train_samples_per_s": ("train samples/s", 0),
    "wall_s": ("wall time (s)", 0),
}


def by_seed(group, value) -> dict[int, float]:
    """value(run_dir, summary) of each run of one experiment, by seed; runs where it is None are left out."""
    values = {summary.get("seed", 0): value(run_dir, summary) for run_dir, summary in group}
    return {seed: v for seed, v in values.items() if v is not None}


def seed_measures(dense_rows: list[dict]) -> dict[str, tuple[str, int, object]]:
    """Every measure of the interval tables: label, decimals and how to read it from a run (None: it has none);
    energy per frame on each architecture is an `energy:<arch>` measure."""
    hw = {(row["run"], row["arch"]): float(row["energy_per_frame_j"]) for row in dense_rows}
    measures = {
        field: (label, digits, lambda run_dir, s, field=field: s[field])
        for field, (label, digits) in SEED_METRICS.items()
    }
    for arch in dict.fromkeys(row["arch"] for row in dense_rows):
        measures[f"energy:{arch}"] = (
            f"{arch} energy/frame (J)",
            3,
            lambda run_dir, s, arch=arch: hw[run_dir.name, arch] if (run_dir.name, arch) in hw else None,
        )
    return measures


def compile_settings(group) -> set:
    """The measured `compiled` of an experiment's runs (None for a summary from before it was recorded)."""
    return {summary.get("compiled") for _, summary in group}


def missing_cell(key: str) -> str:
    """A measure's cell where no run of the experiment has it: energy exists only for runs hw_eval.py costed."""
    return NOT_EVALUATED if key.startswith("energy:") else "n/a"


def difference_cell(difference: stats.Estimate | None, digits: int = 2) -> str:
    """A paired difference as the interval table shows it: marked *not significant* where its interval covers zero."""
    if difference is None:
        return "n/a (no common seed)"
    if difference.half_width is None:
        return f"{difference.mean:+.{digits}f}"
    return f"{difference.format(digits)}{' (not significant)' if difference.covers_zero else ''}"


def intervals_section(runs, dense_rows: list[dict]) -> list[str]:
    """Each experiment's mean and 95% t interval over its seeds, and its difference from exp1 paired seed
    by seed, marked where the interval covers zero."""
    groups, measures = experiment_groups(runs), seed_measures(dense_rows)
    most_seeds = max(len(group) for group in groups.values())
    rows = []
    for experiment, group in groups.items():
        cells = []
        for key, (_, digits, value) in measures.items():
            values = list(by_seed(group, value).values())
            cells.append(stats.mean_interval(values).format(digits) if values else missing_cell(key))
        rows.append([experiment, ", ".join(str(s.get("seed", 0)) for _, s in group), *cells])
    lines = [markdown_table(["experiment", "seeds", *(label for label, _, _ in measures.values())], rows), ""]
    reference = groups.get("exp1")
    if reference is None:
        return lines + ["No exp1 runs: no differences against it."]
    rows = []
    for experiment, group in groups.items():
        if experiment == "exp1":
            continue
        cells = []
        for key, (_, digits, value) in measures.items():
            if key == "train_samples_per_s" and compile_settings(group) != compile_settings(reference):
                cells.append("n/a (compiled differs)")  # throughput compares only like with like
                continue
            difference = stats.paired_difference(by_seed(group, value), by_seed(reference, value))
            cells.append(missing_cell(key) if difference is None else difference_cell(difference, digits))
        rows.append([experiment, *cells])
    lines += [markdown_table(["difference against exp1", *(label for label, _, _ in measures.values())], rows), ""]
    if most_seeds < 2:
        lines.append(
            "One seed per experiment: these differences carry no interval and may be noise. "
            "`make suite SEEDS=3` runs every experiment on seeds 0, 1 and 2 and gives intervals."
        )
    else:
        lines.append(
            "Mean ± the half-width of the 95% t interval over the seeds. Each difference pairs an "
            "experiment's run with exp1's run of the same seed; *not significant*: its interval covers zero."
        )
    return lines
