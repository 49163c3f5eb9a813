"""Energy and latency of each run's MLP on two accelerator models (AccelForge + hwcomponents).

`python hw_eval.py [--runs DIR] [--arch NAME|all|FILE.yaml ...] [--out DIR]` reads every finished run in DIR (its
`summary.json` and `layers.json`), turns each field's layers (coarse, fine) into an AccelForge
workload of one einsum per Linear layer, maps it onto each architecture (default: the Eyeriss-like and
TPU-v4i-like ones; accel/architectures.py lists the rest) whose MACs take the run's operand widths, costs each
mapping under three designs (dense; gating; skipping with compressed activations, from the run's measured
densities; dense only where the architecture's zero handling is not documented), and writes
`results.csv` (a row per run, architecture and design) and one Markdown table per architecture into
`--out`, and each run's own rows, tied to the run's identity, into its run directory (`hw_eval.json`,
which the report reads); a run that logged to W&B gets its rows in its W&B run too. Each layer's MAC is
charged as the format it computed in (layers.json's `format`: fp8 as a float MAC, int8 as an integer one);
hw_eval.json also holds what each architecture charges per MAC of each format, which hw_eval.py prints
(docs/accelerators.md). A run whose ptq.json records its variants' layers has each variant costed too: rows
with the variant's name in results.csv's `variant` column, and in hw_eval.json's `ptq_rows`.
`python hw_eval.py --setup` makes sure CACTI (the Eyeriss model's SRAM estimator) runs here.
`python hw_eval.py --validate-study` models the accelerating-NeRFs study's MLP on its Eyeriss and compares
dense -> skipping with its published ratios (BENCHMARKS.md).

The mapper sees a tile of `--tile` samples; energy and latency are scaled to a whole frame (the
frame of rundir.FRAME_HEIGHT x FRAME_WIDTH pixels that layers.json counts samples for).
Mapped tiles are cached in `<out>/.cache/`, keyed by everything that determines them, so a second
run, and runs with the same layers and bitwidths (exp2 and exp3), do not map again.
Distinct tiles are mapped in parallel, one process per CPU (`--jobs N` to change it).
The parts, one job each, are in accel/ (its __init__ lists them). What the model includes and leaves
out: docs/hw_eval.md, "What it leaves out".
"""

import os
from pathlib import Path

import rundir
import runlog
from accel.results import (
    DESIGN_TITLES,
    FRAME,
    METRICS,
    RUN_RESULTS,
    WEIGHTS_MEASURED,
    exp1_row,
    markdown_table,
    trained_rows,
    write_results_csv,
    write_run_results,
)
from accel.toolchain import check_toolchain, setup
from files import atomic_write
from utils import OneLineParser, UserError, exit_on_user_error

try:
    from accel.architectures import ARCHITECTURES, DEFAULT_ARCHS, selected
    from accel.costing import field_tiles, frame_rows, mac_energy_table, ptq_variants, read_run
    from accel.mapping import map_missing
    from accel.specs import architecture
    from accel.study import validate_study
except ImportError as e:
    # accel.components says what the toolchain needs; run as a command, in one line.
    if __name__ != "__main__":
        raise
    with exit_on_user_error():
        raise UserError(str(e)) from None

DEFAULT_TILE = 16384
WANDB_VALUES = tuple(METRICS)  # per architecture and design


def evaluate(
    runs_dir: Path, arch_names: list[str], out_dir: Path, tile: int = DEFAULT_TILE, jobs: int = 1
) -> list[dict]:
    """Evaluate every run (and its PTQ variants) on every architecture; the trained models' rows, one per run,
    architecture and design (evaluate_with_variants writes them all)."""
    return trained_rows(evaluate_with_variants(runs_dir, arch_names, out_dir, tile, jobs))


def evaluate_with_variants(
    runs_dir: Path, arch_names: list[str], out_dir: Path, tile: int = DEFAULT_TILE, jobs: int = 1
) -> list[dict]:
    """Evaluate every run, and every PTQ variant its ptq.json measured, on every architecture (mapping `jobs`
    tiles at a time); write results.csv (the trained models' rows, then the variants') and <arch>.md (the trained
    models) into out_dir, and each run's own rows into its run directory. Returns every row. arch_names: keys of
    specs.architecture (names, or architecture files' paths: a file's rows and table take its stem)."""
    runs = [read_run(run_dir, summary) for run_dir, summary in rundir.find_runs(runs_dir)]
    archs = [architecture(key) for key in arch_names]  # a bad architecture file is one line before any mapping
    variants = {run.name: ptq_variants(run) for run in runs}  # a bad ptq.json is one line before any mapping
    check_toolchain()
    out_dir.mkdir(parents=True, exist_ok=True)
    costed_runs = runs + [variant for run_variants in variants.values() for variant in run_variants]
    planned, mapping_jobs = [], {}
    for arch_name in arch_names:
        for run in costed_runs:
            fields, run_jobs = field_tiles(run, arch_name, tile, out_dir / ".cache")
            planned.append((run, arch_name, fields))
            mapping_jobs.update(run_jobs)
    map_missing(mapping_jobs, jobs)
    costed = [row for run, arch_name, fields in planned for row in frame_rows(run, arch_name, fields)]
    rows = trained_rows(costed)
    variant_rows = [row for row in costed if row["variant"]]
    write_results_csv(out_dir / "results.csv", rows + variant_rows)
    for arch in archs:
        atomic_write(out_dir / f"{arch.name}.md", arch_table(arch, [r for r in rows if r["arch"] == arch.name]))
    mac_energy = mac_energy_table(arch_names)
    for run in runs:
        ptq = (
            (variants[run.name][0].ptq_sha256, [row for row in variant_rows if row["run"] == run.name])
            if variants[run.name]
            else None
        )
        write_run_results(run.directory, run.identity, [row for row in rows if row["run"] == run.name], mac_energy, ptq)
    return rows + variant_rows


def arch_table(arch, rows: list[dict]) -> str:
    """Energy, latency and EDP per frame of each run under each design the architecture has, side by side, with
    each one's ratio against dense exp1; its node and clock with their sources; then the densities each run's
    sparse designs used (none for a dense-only architecture)."""
    by_run = {}
    for r in rows:
        by_run.setdefault(r["run"], {})[r["design"]] = r
    reference = exp1_row(rows, arch.name)
    titles = {design: DESIGN_TITLES[design] for design in arch.designs}

    def cell(row, key):
        ratio = f" ({row[key] / reference[key]:.3f}×)" if reference else ""
        return f"{row[key]:.4g}{ratio}"

    clock = f"{arch.clock_mhz:.4g} MHz" if arch.clock_hz else "not stated"
    designs_text = (
        "Three designs: *dense* (AccelForge's mapping as it is), *gating* (a zero operand gates its MAC "
        "and the operand reads that feed it: energy saved, cycles not), *skipping* (activations "
        "compressed in memory, zero MACs skipped: energy and cycles saved, with the PE array's load "
        "imbalance)."
        if arch.sparse
        else "Dense only: this architecture has no documented zero handling here, so no gating or skipping "
        "design (docs/accelerators.md)."
    )
    lines = [
        f"# {arch.title}",
        "",
        f"Technology node {arch.tech_node_nm:g} nm ({arch.node_source}); clock {clock} ({arch.clock_source}).",
        "",
        f"Per {FRAME} frame; a model, not a silicon measurement (docs/hw_eval.md). "
        f"{designs_text} In brackets: the ratio to dense exp1" + ("" if reference else " (n/a: no exp1 run)") + ".",
    ]
    for key, title in (
        ("energy_per_frame_j", "Energy per frame (J)"),
        ("latency_per_frame_s", "Latency per frame (s)"),
        ("edp_j_s", "Energy-delay product (J·s)"),
    ):
        table = [
            [
                run,
                designs["dense"]["experiment"],
                designs["dense"]["precision"],
                *(cell(designs[d], key) for d in titles),
            ]
            for run, designs in by_run.items()
        ]
        lines += ["", f"## {title}", "", markdown_table(["run", "experiment", "precision", *titles.values()], table)]
    if arch.sparse:
        lines += density_section(by_run)
    return "\n".join(lines) + "\n"


DENSITY_COLUMNS = [
    "run",
    "input",
    "weight",
    "effectual",
    "joint (measured)",
    "MAC time, skipping",
    "MAC time, balanced",
    "zero-gating (ideal)",
    "weights",
]


def density_section(by_run: dict[str, dict[str, dict]]) -> list[str]:
    """The densities each run's sparse designs used, as the lines of arch_table's last section."""
    densities = []
    for run, designs in by_run.items():
        r = designs["skipping"]
        joint = f"{r['joint_density_measured']:.3f}" if r["joint_density_measured"] != "" else "not measured"
        fractions = [f"{r[key]:.3f}" for key in ("input_density", "weight_density", "effectual_density")]
        times = [f"{r[key]:.3f}" for key in ("mac_time_frac", "mac_time_frac_balanced")]
        gating = f"{100 * r['zero_gating_saving_frac']:.1f} %"
        densities.append([run, *fractions, joint, *times, gating, r["weight_density_source"]])
    return [
        "",
        "## Densities the sparse designs used",
        "",
        "MAC-weighted over the layers. *effectual*: input × weight density, the fraction of MACs with both "
        "operands nonzero under independence; *joint (measured)*: the same fraction counted on the run's "
        "test rays (layers.json), the check of independence. *MAC time*: skipping's MAC cycles against "
        "dense, with the PE array's load imbalance and under perfect balance. *zero-gating (ideal)*: the "
        "share of dense energy in MACs whose input is zero.",
        "",
        markdown_table(DENSITY_COLUMNS, densities),
    ]


def add_to_wandb_runs(runs_dir: Path, rows: list[dict]) -> dict[str, str]:
    """Each run's rows added to the W&B run that trained it (runlog.add_to_run); returns run -> W&B id for
    the runs that had one."""
    ids, rows = {}, trained_rows(rows)  # one row per architecture and design: the trained model's
    for run in dict.fromkeys(row["run"] for row in rows):
        run_rows = [row for row in rows if row["run"] == run]
        if wandb_id := runlog.add_to_run(runs_dir / run, "hw_eval", run_rows, ("arch", "design"), WANDB_VALUES):
            ids[run] = wandb_id
    return ids


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(
        prog="hw_eval.py", description="Energy and latency per frame of each run on accelerator models."
    )
    parser.add_argument("--runs", default="runs", help="folder of run directories (default: runs)")
    parser.add_argument(
        "--arch",
        nargs="+",
        default=list(DEFAULT_ARCHS),
        help=f"architectures: names ({', '.join(ARCHITECTURES)}), all (every one of them), or "
        f"AccelForge architecture files (.yaml; docs/accelerators.md); default: "
        f"{' '.join(DEFAULT_ARCHS)}",
    )
    parser.add_argument("--out", default="hw_eval", help="output folder (default: hw_eval)")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help="samples per mapped tile (default: %(default)s)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="tiles mapped at once, one process each (default: the CPUs here, %(default)s)",
    )
    parser.add_argument("--setup", action="store_true", help="check (and rebuild if needed) CACTI, check dot, and exit")
    parser.add_argument(
        "--validate-study",
        action="store_true",
        help="model the accelerating-NeRFs study's MLP on its Eyeriss and compare with its sparse "
        "results (writes <out>/study_validation.md), and exit",
    )
    args = parser.parse_args(argv)
    with exit_on_user_error():
        arch_names = selected(args.arch)
        if args.setup:
            setup()
            return
        if args.tile < 1:
            raise UserError(f"--tile must be positive, got {args.tile}")
        if args.jobs < 1:
            raise UserError(f"--jobs must be positive, got {args.jobs}")
        if args.validate_study:
            print(validate_study(Path(args.out), args.jobs)["text"], end="")
            return
        every_row = evaluate_with_variants(Path(args.runs), arch_names, Path(args.out), args.tile, args.jobs)
        rows = trained_rows(every_row)
        add_to_wandb_runs(Path(args.runs), rows)
    assumed = sorted({r["run"] for r in rows if r["weight_density_source"] != WEIGHTS_MEASURED})
    if assumed:
        print(
            f"note: {', '.join(assumed)}: layers.json has no weight_density (trained before it was recorded); "
            f"their weights are taken as dense (density 1) in the gating and skipping designs"
        )
    variant_rows = len(every_row) - len(rows)
    print(
        f"{len(rows)} results"
        + (f" and {variant_rows} of PTQ variants" if variant_rows else "")
        + f" -> {Path(args.out) / 'results.csv'} and each run's {RUN_RESULTS}, "
        + ", ".join(str(Path(args.out) / f"{architecture(a).name}.md") for a in arch_names)
    )
    print(mac_energy_text(arch_names), end="")


def mac_energy_text(arch_names: list[str]) -> str:
    """What each architecture charges for one MAC of each format (hw_eval.json's mac_energy_pj), as a table."""
    table = mac_energy_table(arch_names)
    if not table:
        return ""
    formats = list(next(iter(table.values())))
    archs = [arch for arch in map(architecture, arch_names) if arch.name in table]
    body = [
        [
            a.name,
            f"{a.tech_node_nm:g} nm",
            f"{a.clock_mhz:.4g} MHz" if a.clock_hz else "not stated",
            *(f"{table[a.name][f]:.3g}" for f in formats),
        ]
        for a in archs
    ]
    return (
        "\nEnergy per MAC (pJ; float formats accumulate in fp32, integer ones in an exact accumulator for a "
        "256-wide layer):\n" + markdown_table(["architecture", "node", "clock", *formats], body) + "\n"
    )


if __name__ == "__main__":
    main()
