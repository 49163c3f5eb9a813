"""What hw_eval.py writes and report.py reads, and how both show it: one place, torch-free, AccelForge-free.

hw_eval.py writes `<out>/results.csv` (every run it costed) and, into each run directory, `hw_eval.json`:
that run's rows with the identity of the run they were computed for. The report takes a run's numbers from
its own `hw_eval.json` only, and only while that identity is the run's as it is now (`read_run_results`),
so a run retrained, resumed or copied beside another's results is "not evaluated", never shown with
numbers that belong to another run of the same name. Beside the rows, hw_eval.json holds what each
architecture charges per MAC of each format (`read_mac_energy`) and the rows of the run's PTQ variants, tied
to its ptq.json too (`read_ptq_results`); results.csv holds those rows after the trained models' (`variant`).
"""

import csv
import hashlib
import io
from pathlib import Path

import rundir
from accel.sparsity import DESIGNS
from files import atomic_write, read_json, write_json
from utils import UserError

# In each run directory: {"run_id": ..., "layers_sha256": ..., "rows": [results.csv's rows of the trained model],
# "mac_energy_pj": {arch: {format: pJ}}, and where ptq.json has measured layers "ptq_sha256": ptq.json's sha256 and
# "ptq_rows": [results.csv's rows of its variants]}.
RUN_RESULTS = "hw_eval.json"
IDENTITY = ("run_id", "layers_sha256")
MAC_ENERGY, PTQ_ROWS, PTQ_SHA256 = "mac_energy_pj", "ptq_rows", "ptq_sha256"
PTQ_PRECISION = "ptq-{}"  # a PTQ variant's precision in its rows, by the variant's name
NOT_EVALUATED = "not evaluated"  # the report's cell for a run without results of its own
DESIGN_TITLES = dict(zip(DESIGNS, ("dense", "gating", "skipping + compressed activations")))
FRAME = f"{rundir.FRAME_WIDTH}×{rundir.FRAME_HEIGHT}"  # the frame hw_eval.py costs
# Where the energy goes: results.csv's column energy_<group>_j, and its title.
ENERGY_GROUPS = {
    "dram": "DRAM",
    "global_buffer": "global buffer",
    "scratchpad": "scratchpad",
    "mac": "MAC",
    "other": "other",
}
ENERGY_PARTS = {f"energy_{group}_j": title for group, title in ENERGY_GROUPS.items()}
# results.csv's weight_density_source: the weights' densities measured (layers.json), or taken as 1.
WEIGHTS_MEASURED = "measured"
WEIGHTS_ASSUMED_DENSE = "assumed dense: layers.json has no weight_density"
METRICS = {"energy_per_frame_j": ("energy", "J"), "latency_per_frame_s": ("latency", "s"), "edp_j_s": ("EDP", "J·s")}
CSV_COLUMNS = (
    "run",
    "experiment",
    "arch",
    "design",
    "precision",
    "variant",  # "" for the trained model, a PTQ variant's name (ptq.json) for its rows
    *METRICS,
    *ENERGY_PARTS,
    "macs_per_frame",
    "zero_gating_saving_frac",
    # The densities the sparse designs used (MAC-weighted over the layers), and the check of independence.
    "input_density",
    "weight_density",
    "effectual_density",
    "joint_density_measured",
    # Skipping's MAC time against dense, with the PE array's load imbalance and under perfect balance.
    "mac_time_frac",
    "mac_time_frac_balanced",
    # The same design with every weight taken as dense: what the zero weights are worth.
    "energy_weights_dense_j",
    "latency_weights_dense_s",
    "weight_density_source",
    # The same design had every sample reached the MLP: what the occupancy grid's skipping saves.
    "energy_without_grid_j",
    # MLP queries per frame (every field's: coarse + fine), energy per query (µJ) of those that ran
    # and of every sample (energy_without_grid_j / samples_per_frame_all), and per MAC (pJ): all of the
    # energy, and the MACs' own (energy_mac_j); each per dense MAC, whatever the design skips.
    "samples_per_frame",
    "energy_per_sample_uj",
    "energy_per_sample_without_grid_uj",
    "energy_per_mac_pj",
    "mac_energy_per_mac_pj",
    # The architecture model's node (its MACs') and clock.
    "tech_node_nm",
    "clock_mhz",
    # On a compute-in-memory design: the share of MACs computed in float, costed as int8 (accel/cim.py).
    "float_macs_as_int8_frac",
    # The run the row was computed for (run_identity).
    *IDENTITY,
)
SI_PREFIXES = ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p"))


def si(value: float, unit: str = "") -> str:
    """Three significant digits with an SI prefix: si(0.0123, "J") == "12.3 mJ"."""
    for factor, prefix in SI_PREFIXES:
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}".rstrip()
    return f"{value:.3g} {unit}".rstrip()


def percent(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def trained_rows(rows: list[dict]) -> list[dict]:
    """The trained models' rows, without PTQ variants': one per run, architecture and design."""
    return [row for row in rows if not row.get("variant")]


def exp1_row(rows: list[dict], arch: str, design: str = "dense") -> dict | None:
    """exp1's row on the architecture under the design: what the tables compare every run with."""
    return next(
        (
            row
            for row in trained_rows(rows)
            if row["arch"] == arch and row["design"] == design and row["experiment"] == "exp1"
        ),
        None,
    )


def run_identity(run_dir: Path, summary: dict) -> dict[str, str] | None:
    """What a run's results are tied to: summary.json's run_id (unique per run, kept across --resume; a run from
    before it was recorded: layers.json's hash) and the sha256 of layers.json, which --resume measures again.
    None: the run has no layers.json, so nothing to cost."""
    path = Path(run_dir) / rundir.LAYERS
    if not path.is_file():
        return None
    layers_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"run_id": summary.get("run_id") or layers_sha256, "layers_sha256": layers_sha256}


def write_run_results(
    run_dir: Path,
    identity: dict[str, str],
    rows: list[dict],
    mac_energy_pj: dict | None = None,
    ptq: tuple[str, list[dict]] | None = None,
) -> None:
    """The run's hw_eval.json: its trained model's rows, what each architecture charges per MAC of each format,
    and ptq: (ptq.json's sha256, its variants' rows) where it has variants with measured layers."""
    stored = {**identity, "rows": rows}
    if mac_energy_pj is not None:
        stored[MAC_ENERGY] = mac_energy_pj
    if ptq is not None:
        stored[PTQ_SHA256], stored[PTQ_ROWS] = ptq
    write_json(Path(run_dir) / RUN_RESULTS, stored)


def read_stored(run_dir: Path, summary: dict) -> dict | None:
    """The run's hw_eval.json, or None where hw_eval.py has not costed the run as it is now: no hw_eval.json, or
    one computed for another run or another layers.json (stale, or copied from a run of the same name)."""
    path = Path(run_dir) / RUN_RESULTS
    if not path.is_file():
        return None
    stored = read_json(path)
    rows = stored.get("rows") if isinstance(stored, dict) else None
    if (
        not isinstance(rows, list)
        or not all(isinstance(row, dict) for row in rows)
        or not all(isinstance(stored.get(key), str) for key in IDENTITY)
    ):
        raise UserError(f"{path}: expected hw_eval.py's rows with the run's identity; rerun `python hw_eval.py`")
    if {key: stored[key] for key in IDENTITY} != run_identity(run_dir, summary):
        return None
    return stored


def read_run_results(run_dir: Path, summary: dict) -> list[dict] | None:
    """The run's own rows (its trained model's), or None where hw_eval.py has not costed the run as it is now."""
    stored = read_stored(run_dir, summary)
    return None if stored is None else stored["rows"]


def read_mac_energy(run_dir: Path, summary: dict) -> dict[str, dict[str, float]] | None:
    """What each architecture charged per MAC of each format (pJ; {arch: {format: pJ}}) when hw_eval.py costed the
    run as it is now; None where it has not, or its hw_eval.json predates the table."""
    stored = read_stored(run_dir, summary)
    return None if stored is None else stored.get(MAC_ENERGY)


def read_ptq_results(run_dir: Path, summary: dict) -> list[dict] | None:
    """The rows of the run's PTQ variants, or None where hw_eval.py has not costed them for the run and its
    ptq.json as they are now (ptq.json rewritten since, or removed)."""
    stored = read_stored(run_dir, summary)
    path = Path(run_dir) / rundir.PTQ
    if stored is None or PTQ_ROWS not in stored or not path.is_file():
        return None
    return stored[PTQ_ROWS] if stored.get(PTQ_SHA256) == hashlib.sha256(path.read_bytes()).hexdigest() else None


def write_results_csv(path: Path, rows: list[dict]) -> None:
    """results.csv: every row, floats to six significant digits."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    atomic_write(path, buffer.getvalue())


def results_csv_identities(path: Path) -> set[tuple[str, str]]:
    """The identities of the runs a results.csv holds: none where there is no results.csv, or one from before
    they were recorded."""
    if not Path(path).is_file():
        return set()
    with open(path, newline="") as f:
        return {tuple(row.get(key) for key in IDENTITY) for row in csv.DictReader(f)} - {(None, None)}
