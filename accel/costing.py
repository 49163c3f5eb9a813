"""A run costed per frame: each field's cached tile under each design's sparsity model, scaled from the tile's
samples to the frame's; one results.csv row per run, architecture and design (accel.results.CSV_COLUMNS), and
one per PTQ variant of the run (ptq.json's variants with their measured layers), architecture and design."""

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import rundir
from accel import cim, sparsity
from accel.components import int_accumulator_bits, mac_energy_pj
from accel.mapping import cache_path, sparse_tile
from accel.results import ENERGY_GROUPS, PTQ_PRECISION, WEIGHTS_ASSUMED_DENSE, WEIGHTS_MEASURED, run_identity
from accel.specs import architecture
from accel.workloads import einsum_name, field_densities, field_workload, layer_key, split_fields
from files import read_json
from utils import UserError

# What ptq.json measures per layer of a variant, in place of the trained model's (layers.json's).
PTQ_LAYER_FIELDS = ("weight_bits", "input_bits", "format", "weight_density")


@dataclass
class Run:
    """A finished run as it is costed: its layers, and the identity its results are tied to; for a PTQ variant of
    it, the variant's name and its layers (the trained model's, with the variant's measured bits and format)."""

    directory: Path
    summary: dict
    layers: list[dict]
    identity: dict[str, str]
    variant: str = ""  # "" for the trained model
    ptq_sha256: str | None = None  # a variant's: the sha256 of the ptq.json it was read from

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def precision(self) -> str:
        return PTQ_PRECISION.format(self.variant) if self.variant else self.summary.get("precision", "")


def read_run(run_dir: Path, summary: dict) -> Run:
    layers = rundir.read_layers(run_dir)  # a missing or bad layers.json is one line before any mapping
    return Run(run_dir, summary, layers, run_identity(run_dir, summary))


def ptq_variants(run: Run) -> list[Run]:
    """The run's PTQ variants to cost: each row of its ptq.json that carries the variant's measured layers, as the
    run's layers with PTQ_LAYER_FIELDS taken from the variant per layer name. No variants without a ptq.json, or
    with one whose rows predate measured layers."""
    path = run.directory / rundir.PTQ
    if not path.is_file():
        return []
    data = path.read_bytes()
    try:
        rows = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is not a readable JSON file ({e}); rerun ptq.py") from None
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise UserError(f"{path}: expected ptq.py's list of variants; rerun ptq.py")
    index = {layer_key(layer["name"]): i for i, layer in enumerate(run.layers)}
    variants = []
    for row in (row for row in rows if "layers" in row):
        variant, measured = row.get("variant"), row["layers"]
        if (
            not isinstance(variant, str)
            or not variant
            or not isinstance(measured, dict)
            or not all(isinstance(v, dict) and set(PTQ_LAYER_FIELDS) <= v.keys() for v in measured.values())
        ):
            raise UserError(f"{path}: each variant's layers need {', '.join(PTQ_LAYER_FIELDS)}; rerun ptq.py")
        if variant in (v.variant for v in variants):
            raise UserError(f"{path}: variant {variant} appears twice; rerun ptq.py")
        unknown = [name for name in measured if layer_key(name) not in index]
        if unknown:
            raise UserError(
                f"{path}: variant {variant} has layers that {rundir.LAYERS} lacks: {', '.join(unknown)}; rerun ptq.py"
            )
        layers = [dict(layer) for layer in run.layers]
        for name, fields in measured.items():
            layers[index[layer_key(name)]].update({field: fields[field] for field in PTQ_LAYER_FIELDS})
        variants.append(
            Run(run.directory, run.summary, layers, run.identity, variant, hashlib.sha256(data).hexdigest())
        )
    return variants


@dataclass
class FieldTile:
    """One field of a run on one architecture: its layers, and the cached mapping of a tile of `rows` samples."""

    layers: list[dict]
    rows: int
    cache: Path


def field_tiles(run: Run, arch_name: str, tile: int, cache_dir: Path) -> tuple[list[FieldTile], dict]:
    """The run's fields on the architecture, and the mapping job of each (cache path -> map_tile arguments)."""
    int_accumulator = int_accumulator_bits(run.layers)
    fields, jobs = [], {}
    on_macro = architecture(arch_name).cim  # a macro computes integers: cim.costed_layers
    for layers in split_fields(run.layers).values():
        rows = min(tile, layers[0]["samples_per_frame"])
        workload = field_workload(cim.costed_layers(layers) if on_macro else layers, rows)
        path = cache_path(arch_name, workload, int_accumulator, cache_dir)
        fields.append(FieldTile(layers, rows, path))
        jobs[path] = (arch_name, workload, int_accumulator)
    return fields, jobs


def frame_rows(run: Run, arch_name: str, fields: list[FieldTile]) -> list[dict]:
    """results.csv's rows of a run on an architecture (a key of specs.architecture), one per design it has (a
    dense-only one: dense): each field's mapped tile, under the design's sparsity model, scaled to a frame."""
    arch = architecture(arch_name)
    designs = arch.designs
    energy = {design: dict.fromkeys(ENERGY_GROUPS, 0.0) for design in designs}
    latency, mac_time, mac_balanced, energy_weights_dense, latency_weights_dense, energy_without_grid = (
        dict.fromkeys(designs, 0.0) for _ in range(6)
    )
    dense_mac_time = macs = gated = 0.0
    for field in fields:
        result = read_json(field.cache)
        scale = field.layers[0]["samples_per_frame"] / field.rows
        # A layers.json without samples_per_frame_all predates it, and so the occupancy grid: every sample ran.
        scale_all = field.layers[0].get("samples_per_frame_all", field.layers[0]["samples_per_frame"]) / field.rows
        tile = sparse_tile(result)
        hw = arch.sparse_model(result["compute"])
        densities = field_densities(field.layers)
        weights_dense = {e: dataclasses.replace(d, weight=1.0) for e, d in densities.items()}
        for design in designs:
            modelled = sparsity.evaluate(design, hw, tile, densities)
            for component, joules in modelled.energy_j.items():
                energy[design][result["groups"].get(component, "other")] += scale * joules
            latency[design] += scale * modelled.latency_s
            energy_without_grid[design] += scale_all * modelled.energy_total_j
            mac_time[design] += scale * modelled.mac_time_s
            mac_balanced[design] += scale * modelled.mac_time_balanced_s
            counterfactual = sparsity.evaluate(design, hw, tile, weights_dense)
            energy_weights_dense[design] += scale * counterfactual.energy_total_j
            latency_weights_dense[design] += scale * counterfactual.latency_s
        dense_mac_time += scale * sum(s for (e, c), s in tile.latency_s.items() if c == hw.mac)
        macs += scale * result["macs"]
        # Zero-gating skips a MAC whose input is zero: ideally its whole MAC energy.
        for layer in field.layers:
            gated += scale * result["mac_energy_j"][einsum_name(layer)] * layer["input_sparsity"]
    layers = [layer for field in fields for layer in field.layers]
    densities = density_columns(layers)
    dense_total = sum(energy["dense"].values())
    # The MLP's queries per frame, each field's once (coarse and fine), those that ran and those of every sample.
    samples = sum(field.layers[0]["samples_per_frame"] for field in fields)
    samples_all = sum(
        field.layers[0].get("samples_per_frame_all", field.layers[0]["samples_per_frame"]) for field in fields
    )
    rows = []
    for design in designs:
        total = sum(energy[design].values())
        rows.append(
            {
                "run": run.name,
                "experiment": run.summary.get("experiment", run.name),
                "arch": arch.name,
                "design": design,
                "precision": run.precision,
                "variant": run.variant,
                "energy_per_frame_j": total,
                "latency_per_frame_s": latency[design],
                "edp_j_s": total * latency[design],
                **{f"energy_{group}_j": joules for group, joules in energy[design].items()},
                "macs_per_frame": round(macs),
                "zero_gating_saving_frac": gated / dense_total,
                **densities,
                "mac_time_frac": mac_time[design] / dense_mac_time if dense_mac_time else 1.0,
                "mac_time_frac_balanced": mac_balanced[design] / dense_mac_time if dense_mac_time else 1.0,
                "energy_weights_dense_j": energy_weights_dense[design],
                "latency_weights_dense_s": latency_weights_dense[design],
                "energy_without_grid_j": energy_without_grid[design],
                **per_sample_columns(
                    total, energy_without_grid[design], energy[design]["mac"], samples, samples_all, round(macs)
                ),
                "tech_node_nm": arch.tech_node_nm,
                "clock_mhz": arch.clock_mhz,
                "float_macs_as_int8_frac": cim.float_macs_frac(layers) if arch.cim else "",
                **run.identity,
            }
        )
    return rows


def density_columns(layers: list[dict]) -> dict:
    """results.csv's densities of a run's layers, MAC-weighted: input, weight, their product (effectual) and the
    joint density measured on the test rays, with where the weight densities came from."""
    layer_macs = [layer["in_features"] * layer["out_features"] * layer["samples_per_frame"] for layer in layers]

    def mac_weighted(values):
        return sum(m * v for m, v in zip(layer_macs, values)) / sum(layer_macs)

    input_density = [1.0 - layer["input_sparsity"] for layer in layers]
    weight_density = [layer.get("weight_density", 1.0) for layer in layers]
    joint = [layer.get("joint_density") for layer in layers]
    measured = all("weight_density" in layer for layer in layers)
    return {
        "input_density": mac_weighted(input_density),
        "weight_density": mac_weighted(weight_density),
        "effectual_density": mac_weighted([i * w for i, w in zip(input_density, weight_density)]),
        "joint_density_measured": mac_weighted(joint) if None not in joint else "",
        "weight_density_source": WEIGHTS_MEASURED if measured else WEIGHTS_ASSUMED_DENSE,
    }


def per_sample_columns(
    energy_j: float, energy_without_grid_j: float, mac_energy_j: float, samples: int, samples_all: int, macs: int
) -> dict:
    """A row's energy per MLP query (µJ: of the samples that ran, and without the grid of every sample) and per
    MAC (pJ: all of it, and the MACs' own), each MAC of the dense layers counted once whatever the design skips."""
    return {
        "samples_per_frame": samples,
        "energy_per_sample_uj": energy_j / samples * 1e6,
        "energy_per_sample_without_grid_uj": energy_without_grid_j / samples_all * 1e6,
        "energy_per_mac_pj": energy_j / macs * 1e12,
        "mac_energy_per_mac_pj": mac_energy_j / macs * 1e12,
    }


def mac_energy_table(arch_names: list[str]) -> dict[str, dict[str, float]]:
    """What each architecture's LayerMAC charges for one MAC of each format, in pJ (components.mac_energy_pj at its
    node, with its PE), by architecture name: hw_eval.json's mac_energy_pj. A compute-in-memory design has no
    LayerMAC: what its macro charges per MAC is in its rows (mac_energy_per_mac_pj) and docs/accelerators.md."""
    return {
        arch.name: mac_energy_pj(arch.mac_tech_node, arch.pe) for arch in map(architecture, arch_names) if not arch.cim
    }
