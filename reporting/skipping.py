"""Empty-space skipping, per experiment: the fractions of samples its occupancy grid kept from the MLP (measured by
the run), and the dense design's energy per frame with them and with every sample evaluated."""

import numpy as np

from accel.results import NOT_EVALUATED, markdown_table, si
from reporting.runs import experiment_groups

SKIPPED_FRACTIONS = {
    "skipped_train_coarse": "training, coarse",
    "skipped_train_fine": "training, fine",
    "skipped_render_coarse": "rendering, coarse",
    "skipped_render_fine": "rendering, fine",
}


def skipping_section(runs, dense_rows: list[dict]) -> list[str]:
    """Empty-space skipping, per experiment (the mean over its seeds): the measured fractions of samples that
    skipped the MLP, and the dense design's energy per frame with them and with every sample evaluated."""
    groups = {
        name: members
        for name, members in experiment_groups(runs).items()
        if any(k in s for _, s in members for k in SKIPPED_FRACTIONS)
    }
    if not groups:
        return ["No run kept an occupancy grid (`--occupancy-grid`): every sample reached the MLP."]
    hw = {(row["run"], row["arch"]): row for row in dense_rows if row.get("energy_without_grid_j")}
    archs = list(dict.fromkeys(arch for _, arch in hw))
    header = ["experiment", *(f"skipped in {label}" for label in SKIPPED_FRACTIONS.values())]
    for arch in archs:
        header += [f"{arch} energy/frame", "without the grid"]
    rows = []
    for name, members in groups.items():
        row = [name] + [f"{np.mean([s.get(k, 0.0) for _, s in members]):.1%}" for k in SKIPPED_FRACTIONS]
        for arch in archs:
            cells = [hw[(d.name, arch)] for d, _ in members if (d.name, arch) in hw]
            if not cells:
                row += [NOT_EVALUATED, NOT_EVALUATED]
                continue
            with_grid = np.mean([float(c["energy_per_frame_j"]) for c in cells])
            without = np.mean([float(c["energy_without_grid_j"]) for c in cells])
            row += [si(with_grid, "J"), f"{si(without, 'J')} ({without / with_grid:.2f}×)"]
        rows.append(row)
    return [
        markdown_table(header, rows),
        "",
        "Measured by each run: the fraction of the MLP queries its occupancy grid skipped over the training "
        "rays (`skipped_train_*`) and over the final render of the test views (`skipped_render_*`, early "
        "ray termination included). Energy per frame is hw_eval's dense design on the samples the run "
        "evaluated, and on every sample of the frame (*without the grid*, in brackets its ratio).",
    ]
