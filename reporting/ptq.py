"""Post-training quantization (ptq.py's ptq.json in a run directory) beside the runs trained at the same width:
each PTQ point of exp1's runs against its twin trained quantized, over the seeds, and every variant as measured."""

import rundir
import stats
from accel.results import markdown_table, si
from reporting.intervals import by_seed, difference_cell
from reporting.runs import experiment_groups

# The run ptq.py quantizes after training, whose seeds pair with those of the runs that train quantized.
PTQ_SOURCE = "exp1"
# Each PTQ variant (ptq.json's name) beside the experiment that trains at its width: fp16 weights and inputs beside
# mixed precision (exp2: fp16 on CUDA, bf16 on the CPU), int8 weights and inputs beside int8 training (exp7),
# BitNet b1.58's ternary weights and int8 inputs beside BitNeRF (exp4).
QAT_TWINS = {"fp16": "exp2", "int8-dynamic": "exp7", "ternary": "exp4"}
DIGITS = 2  # test PSNR's decimals


def ptq_psnr(run_dir, variant: str) -> float | None:
    """The variant's test PSNR in the run's ptq.json, None where the run has none of it."""
    return next((row["psnr_test"] for row in rundir.read_ptq(run_dir) if row["variant"] == variant), None)


def ptq_width(group, variant: str) -> str:
    """The variant's ladder width as its ptq.json rows give it (rows from before it was recorded: its name)."""
    widths = {
        row.get("width", variant)
        for run_dir, _ in group
        for row in rundir.read_ptq(run_dir)
        if row["variant"] == variant
    }
    return "/".join(sorted(widths))


def seeds_cell(values: dict[int, float]) -> str:
    return ", ".join(str(seed) for seed in sorted(values))


def ptq_vs_qat_table(runs) -> tuple[str, int] | None:
    """Each PTQ point of the PTQ_SOURCE runs beside its QAT_TWINS experiment: test PSNR over the seeds of each (mean ±
    95% t interval from two seeds on) and PTQ − QAT paired seed by seed; with the most seeds either side has. None
    where no PTQ_SOURCE run holds a ptq.json with a variant that has a twin."""
    groups = experiment_groups(runs)
    source = groups.get(PTQ_SOURCE, [])
    rows, most_seeds = [], 0
    for variant, twin in QAT_TWINS.items():
        after = by_seed(source, lambda run_dir, summary, variant=variant: ptq_psnr(run_dir, variant))
        if not after:
            continue
        during = by_seed(groups.get(twin, []), lambda run_dir, summary: summary["psnr_test"])
        most_seeds = max(most_seeds, len(after), len(during))
        trained = (
            f"{twin} ({'/'.join(dict.fromkeys(s['precision'] for _, s in groups[twin]))})"
            if during
            else f"no {twin} run"
        )
        rows.append(
            [
                ptq_width(source, variant),
                f"{PTQ_SOURCE} + {variant}",
                seeds_cell(after),
                stats.mean_interval(list(after.values())).format(DIGITS),
                trained,
                seeds_cell(during) or "—",
                stats.mean_interval(list(during.values())).format(DIGITS) if during else "n/a",
                difference_cell(stats.paired_difference(after, during), DIGITS) if during else "n/a",
            ]
        )
    if not rows:
        return None
    header = [
        "width",
        "after training (ptq.py)",
        "seeds",
        "test PSNR (dB)",
        "during training",
        "seeds",
        "test PSNR (dB)",
        "PTQ − QAT (dB), paired by seed",
    ]
    return markdown_table(header, rows), most_seeds


def ptq_table(runs) -> str | None:
    """Every post-training quantization variant (ptq.py) of every run, beside the runs that train quantized (BitNeRF,
    and the QAT_TWINS experiments), or None without ptq.json."""
    rows = []
    for run_dir, _ in runs:
        rows += [
            [
                f"{run_dir.name}, {v['variant']}",
                "after training (ptq.py)",
                f"{v['weight_bits']:g}",
                si(v["model_bytes"], "B"),
                f"{v['psnr_test']:.2f}",
                f"{v['ssim_test']:.3f}",
                v.get("input_bits", "n/a"),
                v.get("width", "n/a"),
            ]
            for v in rundir.read_ptq(run_dir)
        ]
    if not rows:
        return None
    rows += [
        [
            run_dir.name,
            "during training (BitNet b1.58)" if s["model"] == "bitnerf" else f"during training ({s['precision']})",
            f"{s['weight_bits']:g}",
            si(s["model_bytes"], "B"),
            f"{s['psnr_test']:.2f}",
            f"{s['ssim_test']:.3f}",
            "—",
            s["precision"].split("-")[0],
        ]
        for run_dir, s in runs
        if s["model"] == "bitnerf" or s["experiment"] in QAT_TWINS.values()
    ]
    return markdown_table(
        ["model", "quantized", "weight bits", "model size", "test PSNR (dB)", "test SSIM", "input bits", "width"], rows
    )


def ptq_section(runs) -> list[str]:
    """The section, or nothing where no run holds a ptq.json."""
    table = ptq_table(runs)
    if table is None:
        return []
    lines = [
        "## Post-training quantization vs BitNet training",
        "",
        "The same question answered two ways at each width: quantize a trained NeRF (`python ptq.py runs/exp1`), "
        "or train quantized from the start: BitNeRF's ternary weights (exp4), int8 training (exp7), mixed "
        "precision (exp2).",
        "",
    ]
    paired = ptq_vs_qat_table(runs)
    if paired is not None:
        table_of_pairs, most_seeds = paired
        lines += [table_of_pairs, ""]
        if most_seeds < 2:
            lines += [
                "One seed: the differences carry no interval and may be noise (`make suite SEEDS=3` gives intervals).",
                "",
            ]
        else:
            lines += [
                "Mean ± the half-width of the 95% t interval over the seeds. PTQ − QAT pairs the PTQ of "
                f"{PTQ_SOURCE}'s run of a seed with the quantized-training run of the same seed; *not "
                "significant*: its interval covers zero.",
                "",
            ]
    return lines + [
        "Every variant as measured (weight and input bits of the quantized layers, on the variant), beside "
        "the runs that train quantized:",
        "",
        table,
    ]
