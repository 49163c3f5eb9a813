"""Energy and latency of each run's MLP on two accelerator models (AccelForge + hwcomponents).

`python hw_eval.py [--runs DIR] [--arch NAME ...] [--out DIR]` reads every finished run in DIR (its
`summary.json` and `layers.json`), turns each field's layers (coarse, fine) into an AccelForge
workload of one einsum per Linear layer, maps it onto an Eyeriss-like and a TPU-v4i-like
architecture whose MACs take the run's operand widths, and writes `results.csv` and one Markdown
table per architecture into `--out`.
`python hw_eval.py --setup` makes sure CACTI (the Eyeriss model's SRAM estimator) runs here.

The mapper sees a tile of `--tile` samples; energy and latency are scaled to a whole frame (the
frame of rundir.FRAME_HEIGHT x FRAME_WIDTH pixels that layers.json counts samples for).
Mapped tiles are cached in `<out>/.cache/`, keyed by everything that determines them, so a second
run, and runs with the same layers and bitwidths (exp2 and exp3), do not map again.
Distinct tiles are mapped in parallel, one process per CPU (`--jobs N` to change it).
What the model includes and leaves out: README.md, "Accelerator evaluation".
"""

import contextlib
import csv
import hashlib
import io
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

import precision
import rundir
from utils import OneLineParser, UserError, atomic_write, exit_on_user_error, read_json, write_json

ACCELFORGE_REQUIREMENT = "accelforge==1.0.467"  # as requirements.txt pins it


def toolchain_missing(error: ImportError) -> str:
    """What to do when AccelForge or hwcomponents cannot be imported, in one line."""
    version = ".".join(map(str, sys.version_info[:2]))
    if sys.version_info[:2] < (3, 12):
        return (f"hw_eval.py needs Python >= 3.12 (AccelForge's hwcomponents require it; this is Python {version}):"
                f" run it with Python 3.12+ after pip install {ACCELFORGE_REQUIREMENT}; training and report.py"
                f" work here")
    return f"hw_eval.py needs AccelForge and hwcomponents ({error}): pip install {ACCELFORGE_REQUIREMENT}"


try:
    from hwcomponents import ActionCost, ComponentModel, action
    from hwcomponents.scaling import (tech_node_area, tech_node_energy, tech_node_latency, tech_node_leak,
                                      tech_node_throughput)
    from hwcomponents_library import AladdinAdder, AladdinMultiplier
except ImportError as e:
    # Run as a command, say what it needs in one line; imported, keep the error for the importer.
    if __name__ != "__main__":
        raise ImportError(toolchain_missing(e)) from e
    with exit_on_user_error():
        raise UserError(toolchain_missing(e)) from None

CSV_COLUMNS = ("run", "experiment", "arch", "precision", "energy_per_frame_j", "latency_per_frame_s", "edp_j_s",
               "energy_dram_j", "energy_global_buffer_j", "energy_scratchpad_j", "energy_mac_j", "energy_other_j",
               "macs_per_frame", "zero_gating_saving_frac")
DEFAULT_TILE = 16384
FRAME = f"{rundir.FRAME_WIDTH}x{rundir.FRAME_HEIGHT}"
FLOAT_ACCUMULATOR_BITS = 32  # fp16/bf16 products accumulate in fp32, as tensor cores and TPUs do


@dataclass(frozen=True)
class Architecture:
    title: str
    mac_tech_node: float  # metres; the example's own node (Eyeriss) or the chip's (TPU v4i, 7 nm)
    partial_sum_memories: tuple[str, ...]  # memories that hold outputs while they accumulate
    component_groups: dict[str, str]  # AccelForge component -> results.csv energy column (others: energy_other_j)


# The AccelForge examples `accelforge.examples.arches.<name>`, with the MAC replaced (see LayerMAC).
ARCHITECTURES = {
    "eyeriss": Architecture(
        title="Eyeriss-like row-stationary array (168 PEs, 65 nm)", mac_tech_node=65e-9,
        partial_sum_memories=("OutputScratchpad",),
        component_groups={"MainMemory": "dram", "GlobalBuffer": "global_buffer", "InputScratchpad": "scratchpad",
                          "WeightScratchpad": "scratchpad", "OutputScratchpad": "scratchpad", "MAC": "mac"}),
    "tpu_v4i": Architecture(
        title="TPU-v4i-like core: four 128x128 systolic arrays (7 nm)", mac_tech_node=7e-9,
        partial_sum_memories=("LocalBuffer",),
        component_groups={"MainMemory": "dram", "GlobalBuffer": "global_buffer", "LocalBuffer": "scratchpad",
                          "Register": "scratchpad", "MAC": "mac"}),
}
ENERGY_GROUPS = ("dram", "global_buffer", "scratchpad", "mac", "other")

# Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm:
# (energy in J, area in m^2) of one floating-point operation by operand width.
HOROWITZ_FLOAT_45NM = {
    ("multiply", 16): (1.1e-12, 1640e-12), ("multiply", 32): (3.7e-12, 7700e-12),
    ("add", 16): (0.4e-12, 1360e-12), ("add", 32): (0.9e-12, 4184e-12),
}


class FloatMAC(ComponentModel):
    """A floating-point multiplier and adder, from Horowitz (ISSCC 2014, 45 nm) scaled to tech_node.

    bf16 takes fp16's numbers: Horowitz has no bf16, and its 8-bit significand multiplier is smaller
    than fp16's 11-bit one, so this overestimates bf16 a little.
    """

    component_name = "FloatMAC"
    priority = 0.9

    def __init__(self, tech_node: float, multiplier_width: int, adder_width: int):
        if ("multiply", multiplier_width) not in HOROWITZ_FLOAT_45NM or ("add", adder_width) not in HOROWITZ_FLOAT_45NM:
            raise ValueError(f"no float MAC data for {multiplier_width}-bit products and {adder_width}-bit sums")
        (multiply_j, multiply_m2), (add_j, add_m2) = (HOROWITZ_FLOAT_45NM["multiply", multiplier_width],
                                                     HOROWITZ_FLOAT_45NM["add", adder_width])
        super().__init__(leak_power=0.0, area=multiply_m2 + add_m2)
        self.energy_j = multiply_j + add_j
        self.tech_node = self.scale("tech_node", tech_node, 45e-9, area_scale_function=tech_node_area,
                                    energy_scale_function=tech_node_energy, latency_scale_function=tech_node_latency,
                                    throughput_scale_function=tech_node_throughput,
                                    leak_power_scale_function=tech_node_leak)

    @action
    def compute(self) -> ActionCost:
        return ActionCost(energy=self.energy_j, throughput=1e9, latency=1e-9)


class LayerMAC(ComponentModel):
    """The MAC for one layer's operand widths: FloatMAC for float operands, else the hwcomponents
    library's Aladdin integer multiplier (linear in each operand's width) and adder (ISCA 2014, 40 nm)."""

    component_name = "LayerMAC"
    priority = 0.9

    def __init__(self, tech_node: float, weight_bits: int, input_bits: int, accumulator_bits: int):
        self.is_float = precision.is_float(input_bits)
        if self.is_float:
            self.parts = [FloatMAC(tech_node, max(weight_bits, input_bits), accumulator_bits)]
        else:
            self.parts = [AladdinMultiplier(tech_node, width_a=weight_bits, width_b=input_bits),
                          AladdinAdder(tech_node, accumulator_bits)]
        super().__init__(subcomponents=self.parts)

    @action
    def compute(self):
        if self.is_float:
            self.parts[0].compute()
        else:
            self.parts[0].multiply()
            self.parts[1].add()


def accumulator_bits_expression(int_accumulator_bits: int) -> str:
    """An einsum's partial-sum width, as an AccelForge expression over its tensors."""
    # The same test as precision.is_float, in AccelForge's expression language.
    return f"{FLOAT_ACCUMULATOR_BITS} if input.bits_per_value >= {precision.FLOAT_MIN_BITS} else {int_accumulator_bits}"


def int_accumulator_bits(layers: list[dict]) -> int:
    """Bits that hold an exact sum of the widest integer layer's products: w + x - 1 bits per signed
    product, plus one bit per doubling of the terms summed."""
    widths = [l["weight_bits"] + l["input_bits"] - 1 + math.ceil(math.log2(l["in_features"]))
              for l in layers if not precision.is_float(l["input_bits"])]
    return max(widths, default=FLOAT_ACCUMULATOR_BITS)


# --- Workloads -----------------------------------------------------------------------------------

def split_fields(layers: list[dict]) -> dict[str, list[dict]]:
    """Layers grouped by radiance field (the name's first part: coarse, fine), in execution order."""
    fields: dict[str, list[dict]] = {}
    for layer in layers:
        fields.setdefault(layer["name"].split(".")[0], []).append(layer)
    return fields


def einsum_name(layer: dict) -> str:
    """The layer's name within its field (coarse.layers.0 -> layers_0): the same in every field, so equal
    fields give equal workloads and share a cache entry."""
    return layer["name"].split(".", 1)[-1].replace(".", "_")


def layer_inputs(layers: list[dict]) -> list[int]:
    """For each layer of a field, the index of the layer whose output it reads (-1: the encoded point).

    A layer reads the latest output as wide as its input. A wider input is a concatenation (the skip
    layer: the encoded point beside the hidden state; the colour branch: the feature beside the
    encoded view direction): it reads the latest narrower output, which the model widens by the
    concatenated columns (see field_workload).
    """
    widths = [layers[0]["in_features"]] + [l["out_features"] for l in layers]  # widths[j + 1]: layer j's output
    sources = []
    for i, layer in enumerate(layers):
        earlier = range(i, -1, -1)  # candidate outputs, latest first, as indices into widths
        same = [j for j in earlier if widths[j] == layer["in_features"]]
        narrower = [j for j in earlier if widths[j] < layer["in_features"]]
        if not same and not narrower:
            raise UserError(f"layer {layer['name']} reads {layer['in_features']} features, but no earlier "
                            f"output is that wide or narrower")
        sources.append((same or narrower)[0] - 1)
    return sources


def field_workload(layers: list[dict], rows: int) -> dict:
    """An AccelForge workload for one field: one einsum per Linear layer, `rows` samples.

    Tensors: X (the encoded point), Y_<layer> (outputs), W_<layer> (weights). An activation is stored
    as wide as its widest reader takes it (BitNeRF quantizes to int8 as it writes the next layer's
    input); a final output as the layer writes it. A concatenating layer reads its source tensor over
    a wider rank than the source writes: the extra columns are the concatenated input.
    """
    names = [einsum_name(l) for l in layers]
    sources = layer_inputs(layers)
    tensors = ["X"] + [f"Y_{n}" for n in names]  # tensors[j + 1]: layer j's output
    readers: dict[int, list[dict]] = {}
    for layer, source in zip(layers, sources):
        readers.setdefault(source, []).append(layer)
    bits = {tensors[j + 1]: max((r["input_bits"] for r in readers.get(j, [])), default=layers[j]["output_bits"])
            for j in range(len(layers))}
    bits["X"] = max(r["input_bits"] for r in readers[-1])
    shape = {"m": f"0 <= m < {rows}"}
    einsums = []
    for layer, name, source in zip(layers, names, sources):
        input_tensor, output_tensor, weight = tensors[source + 1], f"Y_{name}", f"W_{name}"
        shape[f"k_{name}"] = f"0 <= k_{name} < {layer['in_features']}"
        shape[f"n_{name}"] = f"0 <= n_{name} < {layer['out_features']}"
        einsums.append({
            "name": name,
            "tensor_accesses": [
                {"name": input_tensor, "projection": {"M": "m", f"C_{input_tensor}": f"k_{name}"},
                 "bits_per_value": bits[input_tensor]},
                {"name": weight, "projection": {f"K_{name}": f"k_{name}", f"N_{name}": f"n_{name}"},
                 "bits_per_value": layer["weight_bits"]},
                {"name": output_tensor, "projection": {"M": "m", f"C_{output_tensor}": f"n_{name}"},
                 "output": True, "bits_per_value": bits[output_tensor]},
            ],
            "renames": {"input": input_tensor, "weight": weight, "output": output_tensor},
        })
    return {"iteration_space_shape": shape, "einsums": einsums}


# --- Mapping -------------------------------------------------------------------------------------

def cacti_dir() -> Path:
    import hwcomponents_cacti

    return Path(hwcomponents_cacti.__file__).parent / "cacti"


def cacti_runs() -> bool:
    """Whether the CACTI binary starts here (the shipped one needs glibc 2.38: Debian 12 and Ubuntu 22.04 lack it)."""
    binary = cacti_dir() / "cacti"
    if not binary.is_file():
        return False
    # Without arguments a working CACTI prints its usage ("how to use CACTI"); a broken one a loader error.
    result = subprocess.run([str(binary)], capture_output=True, text=True)
    return "CACTI" in result.stdout + result.stderr


def setup() -> None:
    """Rebuild CACTI from the sources shipped beside it when the binary does not run (idempotent), check for dot."""
    if cacti_runs():
        print(f"CACTI runs: {cacti_dir() / 'cacti'}")
    else:
        if not (shutil.which("make") and shutil.which("g++")):
            raise UserError("CACTI must be rebuilt here, which needs make and g++ (apt-get install build-essential)")
        print(f"rebuilding CACTI in {cacti_dir()} (about 20 s) ...")
        build = subprocess.run("make clean && make opt", shell=True, cwd=cacti_dir(), capture_output=True, text=True)
        if build.returncode != 0 or not cacti_runs():
            last_line = (build.stderr or build.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"rebuilding CACTI in {cacti_dir()} failed: {last_line[0]}")
        print("CACTI rebuilt and runs")
    check_dot()


def check_dot() -> None:
    if shutil.which("dot") is None:
        raise UserError("the AccelForge mapper needs graphviz's `dot` on the PATH: install the graphviz package "
                        "(make setup does, as root; else: sudo apt-get install graphviz)")


def check_toolchain() -> None:
    """Fail with one line before mapping, not with a traceback from inside the mapper."""
    try:
        import accelforge  # noqa: F401
    except ImportError as e:
        raise UserError(toolchain_missing(e)) from None
    if not cacti_runs():
        raise UserError("CACTI does not run on this machine: run `python hw_eval.py --setup` (or make setup)")
    check_dot()


def build_spec(arch_name: str, workload: dict, int_accumulator: int):
    """The example architecture with a LayerMAC of this workload's operand widths, and the workload."""
    import accelforge as af

    arch = ARCHITECTURES[arch_name]
    spec = af.Spec.from_yaml(getattr(af.examples.arches, arch_name))
    spec.workload = af.Workload(**workload)
    spec.config.add_component_models(LayerMAC, FloatMAC)
    accumulator = accumulator_bits_expression(int_accumulator)
    mac = spec.arch.nodes["MAC"]
    mac.component_class = "LayerMAC"
    for mac_action in mac.actions:
        mac_action.energy = None  # from LayerMAC; the example's throughput stays
    mac.extra_attributes_for_component_model = type(mac.extra_attributes_for_component_model)(
        tech_node=arch.mac_tech_node, weight_bits="weight.bits_per_value", input_bits="input.bits_per_value",
        accumulator_bits=accumulator)
    for name in arch.partial_sum_memories:
        spec.arch.nodes[name].bits_per_value = {"output": accumulator}
    spec.mapper.metrics = af.mapper.Metrics.ENERGY
    return spec


def map_tile(arch_name: str, workload: dict, int_accumulator: int) -> dict:
    """Map one workload with AccelForge's FFM mapper (lowest energy); energies in J, latency in s, per tile.

    The mapper runs in a temporary directory (it writes mapping.svg into the working directory) with
    its console output captured, in one process: AccelForge's own pool, which splits one mapping across
    processes, was 4x slower on 2 cores (map_missing runs whole tiles in parallel instead).
    """
    import accelforge as af
    from accelforge.mapper.FFM.main import map_workload_to_arch

    af.set_n_parallel_jobs(1)
    spec = build_spec(arch_name, workload, int_accumulator)
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp), \
            contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        mapping = map_workload_to_arch(spec, print_progress=False)
    per_einsum_component = mapping.energy(per_component=True, per_einsum=True)
    energy_j: dict[str, float] = {}
    for (_, component), joules in per_einsum_component.items():
        energy_j[component] = energy_j.get(component, 0.0) + joules
    return {
        "energy_j": energy_j,
        "mac_energy_j": {e["name"]: per_einsum_component[e["name"], "MAC"] for e in workload["einsums"]},
        "latency_s": float(mapping.latency()),
        "macs": int(sum(n for (e, c, a), n in mapping.actions(per_einsum=True).items() if c == "MAC")),
    }


def cache_path(arch_name: str, workload: dict, int_accumulator: int, cache_dir: Path) -> Path:
    """Where a tile's mapping is cached: keyed by the workload, the architecture, the accumulator width,
    AccelForge's version and this file (any change to the model invalidates it)."""
    from importlib.metadata import version

    model = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    key = json.dumps({"workload": workload, "arch": arch_name, "int_accumulator": int_accumulator,
                      "accelforge": version("accelforge"), "model": model}, sort_keys=True)
    return cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


def map_to_cache(path: Path, arch_name: str, workload: dict, int_accumulator: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, map_tile(arch_name, workload, int_accumulator))


def map_missing(tiles: dict[Path, tuple[str, dict, int]], jobs: int) -> None:
    """Map every tile whose cache file is missing, `jobs` tiles at a time in separate processes.

    One mapping is single-threaded Python, so independent tiles in parallel scale with the cores
    (two at once on 2 cores took as long as one alone).
    """
    missing = {path: tile for path, tile in tiles.items() if not path.is_file()}
    if not missing:
        return
    with tqdm(total=len(missing), desc="hw_eval mappings", unit="tile", disable=None) as progress:
        if min(jobs, len(missing)) == 1:
            for path, tile in missing.items():
                progress.set_postfix_str(tile[0])
                map_to_cache(path, *tile)
                progress.update()
            return
        # spawn, not fork: the caller may hold threads (PyTorch's in the tests), which fork can deadlock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(missing)), mp_context=context) as pool:
            for future in as_completed([pool.submit(map_to_cache, path, *tile) for path, tile in missing.items()]):
                future.result()
                progress.update()


# --- Runs and results ----------------------------------------------------------------------------

@dataclass
class Run:
    name: str
    summary: dict
    layers: list[dict]


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


def frame_row(run: Run, arch_name: str, fields: list[FieldTile]) -> dict:
    """One results.csv row: each field's mapped tile scaled to a frame."""
    energy = dict.fromkeys(ENERGY_GROUPS, 0.0)
    latency = macs = gated = 0.0
    for field in fields:
        result = read_json(field.cache)
        scale = field.layers[0]["samples_per_frame"] / field.rows
        for component, joules in result["energy_j"].items():
            energy[ARCHITECTURES[arch_name].component_groups.get(component, "other")] += scale * joules
        latency += scale * result["latency_s"]
        macs += scale * result["macs"]
        # Zero-gating skips a MAC whose input is zero: ideally its whole MAC energy.
        for layer in field.layers:
            gated += scale * result["mac_energy_j"][einsum_name(layer)] * layer["input_sparsity"]
    total = sum(energy.values())
    return {
        "run": run.name, "experiment": run.summary.get("experiment", run.name), "arch": arch_name,
        "precision": run.summary.get("precision", ""), "energy_per_frame_j": total,
        "latency_per_frame_s": latency, "edp_j_s": total * latency,
        **{f"energy_{group}_j": joules for group, joules in energy.items()},
        "macs_per_frame": round(macs), "zero_gating_saving_frac": gated / total,
    }


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    atomic_write(path, buffer.getvalue())


def markdown_table(arch_name: str, rows: list[dict]) -> str:
    """Energy, latency and EDP per frame of each run, and their ratios against exp1's."""
    reference = next((r for r in rows if r["experiment"] == "exp1"), None)

    def ratio(row, key):
        return f"{row[key] / reference[key]:.3f}" if reference else "n/a"

    lines = [
        f"# {ARCHITECTURES[arch_name].title}",
        "",
        f"Per {FRAME} frame; a model, not a silicon measurement (README.md, \"Accelerator evaluation\").",
        "",
        "| run | experiment | precision | energy/frame (J) | latency/frame (s) | EDP (J·s) | ×exp1 energy "
        "| ×exp1 latency | zero-gating saving |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['run']} | {r['experiment']} | {r['precision']} | {r['energy_per_frame_j']:.4g} "
                     f"| {r['latency_per_frame_s']:.4g} | {r['edp_j_s']:.4g} | {ratio(r, 'energy_per_frame_j')} "
                     f"| {ratio(r, 'latency_per_frame_s')} | {100 * r['zero_gating_saving_frac']:.1f} % |")
    return "\n".join(lines) + "\n"


def evaluate(runs_dir: Path, arch_names: list[str], out_dir: Path, tile: int = DEFAULT_TILE,
             jobs: int = 1) -> list[dict]:
    """Evaluate every run on every architecture (mapping `jobs` tiles at a time); write results.csv and
    <arch>.md into out_dir."""
    runs = [Run(run_dir.name, summary, rundir.read_layers(run_dir)) for run_dir, summary in rundir.find_runs(runs_dir)]
    check_toolchain()
    out_dir.mkdir(parents=True, exist_ok=True)
    planned, mapping_jobs = [], {}
    for arch_name in arch_names:
        for run in runs:
            fields, run_jobs = field_tiles(run, arch_name, tile, out_dir / ".cache")
            planned.append((run, arch_name, fields))
            mapping_jobs.update(run_jobs)
    map_missing(mapping_jobs, jobs)
    rows = [frame_row(run, arch_name, fields) for run, arch_name, fields in planned]
    write_csv(out_dir / "results.csv", rows)
    for arch_name in arch_names:
        atomic_write(out_dir / f"{arch_name}.md",
                     markdown_table(arch_name, [r for r in rows if r["arch"] == arch_name]))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="hw_eval.py",
                           description="Energy and latency per frame of each run on accelerator models.")
    parser.add_argument("--runs", default="runs", help="folder of run directories (default: runs)")
    parser.add_argument("--arch", nargs="+", choices=list(ARCHITECTURES), default=list(ARCHITECTURES),
                        help="architectures (default: all)")
    parser.add_argument("--out", default="hw_eval", help="output folder (default: hw_eval)")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, help="samples per mapped tile (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                        help="tiles mapped at once, one process each (default: the CPUs here, %(default)s)")
    parser.add_argument("--setup", action="store_true", help="check (and rebuild if needed) CACTI, check dot, and exit")
    args = parser.parse_args(argv)
    arch_names = list(dict.fromkeys(args.arch))
    with exit_on_user_error():
        if args.setup:
            setup()
            return
        if args.tile < 1:
            raise UserError(f"--tile must be positive, got {args.tile}")
        if args.jobs < 1:
            raise UserError(f"--jobs must be positive, got {args.jobs}")
        rows = evaluate(Path(args.runs), arch_names, Path(args.out), args.tile, args.jobs)
    print(f"{len(rows)} results -> {Path(args.out) / 'results.csv'}, "
          + ", ".join(str(Path(args.out) / f"{a}.md") for a in arch_names))


if __name__ == "__main__":
    main()
