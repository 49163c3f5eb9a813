"""The table of every experiment: what each run measured about itself, and its energy and latency per frame on
each modelled accelerator."""

from accel.results import FRAME, NOT_EVALUATED, markdown_table, si

COMPILED = {True: "yes", False: "no"}


def throughput_ratio(summary: dict, baseline: dict | None) -> str:
    """A run's training samples/s over exp1's, where both ran with the same measured compile setting."""
    if baseline is None:
        return "n/a (no exp1)"
    if summary.get("compiled") is None or summary.get("compiled") != baseline.get("compiled"):
        return (
            f"not compared (compiled: {COMPILED.get(summary.get('compiled'), 'unknown')},"
            f" exp1 {COMPILED.get(baseline.get('compiled'), 'unknown')})"
        )
    return f"{summary['train_samples_per_s'] / baseline['train_samples_per_s']:.2f}×"


def results_table(runs, dense_rows: list[dict], not_evaluated: str) -> str:
    """The table of every experiment, and the notes that say what its columns mean; not_evaluated says what a
    run without accelerator results of its own shows, and how to cost it."""
    archs = list(dict.fromkeys(row["arch"] for row in dense_rows))
    hw = {(row["run"], row["arch"]): row for row in dense_rows}
    header = [
        "experiment",
        "precision",
        "world size",
        "global batch (rays)",
        "steps",
        "wall time",
        "train samples/s",
        "compiled",
        "samples/s vs exp1",
        "peak memory",
        "test PSNR (dB)",
        "test SSIM",
        "parameters",
        "weight bits",
        "model size",
    ]
    baseline = next((s for _, s in runs if s["experiment"] == "exp1"), None)
    for arch in archs or [None]:
        prefix = f"{arch} " if arch else ""
        header += [f"{prefix}energy/frame", f"{prefix}latency/frame"]
    rows = []
    for run_dir, s in runs:
        row = [
            s["experiment"],
            s["precision"],
            s["world_size"],
            s["global_batch_rays"],
            s["steps"],
            f"{s['wall_s']:.0f} s",
            si(s["train_samples_per_s"]),
            COMPILED.get(s.get("compiled"), "unknown"),
            throughput_ratio(s, baseline),
            si(s["peak_mem_bytes"], "B"),
            f"{s['psnr_test']:.2f}",
            f"{s['ssim_test']:.3f}",
            si(s["params"]),
            f"{s['weight_bits']:g}",
            si(s["model_bytes"], "B"),
        ]
        for arch in archs or [None]:
            hw_row = hw.get((run_dir.name, arch))
            row += (
                [si(float(hw_row["energy_per_frame_j"]), "J"), si(float(hw_row["latency_per_frame_s"]), "s")]
                if hw_row
                else [NOT_EVALUATED, NOT_EVALUATED]
            )
        rows.append(row)
    notes = [
        "- *wall time*: the whole training command (evaluation and video included); *train samples/s*: MLP "
        "queries per second of the optimizer steps; *peak memory*: CUDA's peak allocation, or on the CPU the "
        "process's peak resident set; *model size*: the deployable weights file (BitNeRF: 2-bit packed ternary).",
        "- *compiled*: whether the run's radiance fields were torch.compile'd modules (measured by the run; "
        "*unknown* for runs that predate the record). *samples/s vs exp1* compares only runs with the same "
        "setting: compiling changes throughput by itself, and would be credited to the experiment's axis.",
    ]
    if hw:
        notes.append(
            f"- Energy and latency per {FRAME} frame on each architecture are AccelForge models of "
            "the run's layers (`hw_eval.py`), not silicon measurements."
        )
    if not archs or any((run_dir.name, arch) not in hw for run_dir, _ in runs for arch in archs):
        notes.append(f"- {not_evaluated}")
    return markdown_table(header, rows) + "\n\n" + "\n".join(notes)
