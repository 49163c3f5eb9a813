"""A run costed per frame: each field's cached tile under each design's sparsity model, scaled from the tile's
samples to the frame's; one results.csv row per run, architecture and design (accel.results.CSV_COLUMNS)."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import rundir
from accel import sparsity
from accel.architectures import ARCHITECTURES
from accel.components import int_accumulator_bits
from accel.mapping import cache_path, sparse_tile
from accel.results import ENERGY_GROUPS, WEIGHTS_ASSUMED_DENSE, WEIGHTS_MEASURED, run_identity
from accel.sparsity import DESIGNS
from accel.workloads import einsum_name, field_densities, field_workload, split_fields
from files import read_json


@dataclass
class Run:
    """A finished run as it is costed: its layers, and the identity its results are tied to."""
    directory: Path
    summary: dict
    layers: list[dict]
    identity: dict[str, str]

    @property
    def name(self) -> str:
        return self.directory.name


def read_run(run_dir: Path, summary: dict) -> Run:
    layers = rundir.read_layers(run_dir)  # a missing or bad layers.json is one line before any mapping
    return Run(run_dir, summary, layers, run_identity(run_dir, summary))


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
    for layers in split_fields(run.layers).values():
        rows = min(tile, layers[0]["samples_per_frame"])
        workload = field_workload(layers, rows)
        path = cache_path(arch_name, workload, int_accumulator, cache_dir)
        fields.append(FieldTile(layers, rows, path))
        jobs[path] = (arch_name, workload, int_accumulator)
    return fields, jobs


def frame_rows(run: Run, arch_name: str, fields: list[FieldTile]) -> list[dict]:
    """results.csv's rows of a run on an architecture, one per design: each field's mapped tile, under the
    design's sparsity model, scaled to a frame."""
    arch = ARCHITECTURES[arch_name]
    energy = {design: dict.fromkeys(ENERGY_GROUPS, 0.0) for design in DESIGNS}
    latency, mac_time, mac_balanced, energy_weights_dense, latency_weights_dense, energy_without_grid = (
        dict.fromkeys(DESIGNS, 0.0) for _ in range(6))
    dense_mac_time = macs = gated = 0.0
    for field in fields:
        result = read_json(field.cache)
        scale = field.layers[0]["samples_per_frame"] / field.rows
        # A layers.json without samples_per_frame_all predates it, and so the occupancy grid: every sample ran.
        scale_all = field.layers[0].get("samples_per_frame_all", field.layers[0]["samples_per_frame"]) / field.rows
        tile = sparse_tile(result)
        densities = field_densities(field.layers)
        weights_dense = {e: dataclasses.replace(d, weight=1.0) for e, d in densities.items()}
        for design in DESIGNS:
            modelled = sparsity.evaluate(design, arch.sparse, tile, densities)
            for component, joules in modelled.energy_j.items():
                energy[design][arch.component_groups.get(component, "other")] += scale * joules
            latency[design] += scale * modelled.latency_s
            energy_without_grid[design] += scale_all * modelled.energy_total_j
            mac_time[design] += scale * modelled.mac_time_s
            mac_balanced[design] += scale * modelled.mac_time_balanced_s
            counterfactual = sparsity.evaluate(design, arch.sparse, tile, weights_dense)
            energy_weights_dense[design] += scale * counterfactual.energy_total_j
            latency_weights_dense[design] += scale * counterfactual.latency_s
        dense_mac_time += scale * sum(s for (e, c), s in tile.latency_s.items() if c == arch.sparse.mac)
        macs += scale * result["macs"]
        # Zero-gating skips a MAC whose input is zero: ideally its whole MAC energy.
        for layer in field.layers:
            gated += scale * result["mac_energy_j"][einsum_name(layer)] * layer["input_sparsity"]
    layers = [layer for field in fields for layer in field.layers]
    layer_macs = [layer["in_features"] * layer["out_features"] * layer["samples_per_frame"] for layer in layers]

    def mac_weighted(values):
        return sum(m * v for m, v in zip(layer_macs, values)) / sum(layer_macs)

    input_density = [1.0 - layer["input_sparsity"] for layer in layers]
    weight_density = [layer.get("weight_density", 1.0) for layer in layers]
    joint = [layer.get("joint_density") for layer in layers]
    measured = all("weight_density" in layer for layer in layers)
    dense_total = sum(energy["dense"].values())
    rows = []
    for design in DESIGNS:
        total = sum(energy[design].values())
        rows.append({
            "run": run.name, "experiment": run.summary.get("experiment", run.name), "arch": arch_name,
            "design": design, "precision": run.summary.get("precision", ""), "energy_per_frame_j": total,
            "latency_per_frame_s": latency[design], "edp_j_s": total * latency[design],
            **{f"energy_{group}_j": joules for group, joules in energy[design].items()},
            "macs_per_frame": round(macs), "zero_gating_saving_frac": gated / dense_total,
            "input_density": mac_weighted(input_density), "weight_density": mac_weighted(weight_density),
            "effectual_density": mac_weighted([i * w for i, w in zip(input_density, weight_density)]),
            "joint_density_measured": mac_weighted(joint) if None not in joint else "",
            "mac_time_frac": mac_time[design] / dense_mac_time if dense_mac_time else 1.0,
            "mac_time_frac_balanced": mac_balanced[design] / dense_mac_time if dense_mac_time else 1.0,
            "energy_weights_dense_j": energy_weights_dense[design],
            "latency_weights_dense_s": latency_weights_dense[design],
            "weight_density_source": WEIGHTS_MEASURED if measured else WEIGHTS_ASSUMED_DENSE,
            "energy_without_grid_j": energy_without_grid[design], **run.identity,
        })
    return rows
