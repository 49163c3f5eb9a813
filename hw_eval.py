"""Energy and latency of each run's MLP on two accelerator models (AccelForge + hwcomponents).

`python hw_eval.py [--runs DIR] [--arch NAME ...] [--out DIR]` reads every finished run in DIR (its
`summary.json` and `layers.json`), turns each field's layers (coarse, fine) into an AccelForge
workload of one einsum per Linear layer, maps it onto an Eyeriss-like and a TPU-v4i-like
architecture whose MACs take the run's operand widths, costs each mapping under three designs (dense;
gating; skipping with compressed activations: sparsity.py, from the run's measured densities), and
writes `results.csv` (a row per run, architecture and design) and one Markdown table per architecture
into `--out`; a run that logged to W&B gets its rows in its W&B run too.
`python hw_eval.py --setup` makes sure CACTI (the Eyeriss model's SRAM estimator) runs here.
`python hw_eval.py --validate-study` models the accelerating-NeRFs study's MLP on its Eyeriss and compares
dense -> skipping with its published ratios (BENCHMARKS.md).

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
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

import precision
import rundir
import runlog
import sparsity
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

CSV_COLUMNS = ("run", "experiment", "arch", "design", "precision", "energy_per_frame_j", "latency_per_frame_s",
               "edp_j_s", "energy_dram_j", "energy_global_buffer_j", "energy_scratchpad_j", "energy_mac_j",
               "energy_other_j", "macs_per_frame", "zero_gating_saving_frac",
               # The densities the sparse designs used (MAC-weighted over the layers), and the check of independence.
               "input_density", "weight_density", "effectual_density", "joint_density_measured",
               # Skipping's MAC time against dense, with the PE array's load imbalance and under perfect balance.
               "mac_time_frac", "mac_time_frac_balanced",
               # The same design with every weight taken as dense: what the zero weights are worth.
               "energy_weights_dense_j", "latency_weights_dense_s", "weight_density_source",
               # The same design had every sample reached the MLP: what the occupancy grid's skipping saves.
               "energy_without_grid_j")
DESIGNS = sparsity.DESIGNS
WANDB_VALUES = ("energy_per_frame_j", "latency_per_frame_s", "edp_j_s")  # per architecture and design
DEFAULT_TILE = 16384
FRAME = f"{rundir.FRAME_WIDTH}x{rundir.FRAME_HEIGHT}"
FLOAT_ACCUMULATOR_BITS = 32  # fp16/bf16 products accumulate in fp32, as tensor cores and TPUs do


@dataclass(frozen=True)
class Architecture:
    title: str
    mac_tech_node: float  # metres; the example's own node (Eyeriss) or the chip's (TPU v4i, 7 nm)
    partial_sum_memories: tuple[str, ...]  # memories that hold outputs while they accumulate
    component_groups: dict[str, str]  # AccelForge component -> results.csv energy column (others: energy_other_j)
    sparse: sparsity.SparseHardware  # how the gating and skipping designs exploit zeros (README: the sources)


# The AccelForge examples `accelforge.examples.arches.<name>`, with the MAC replaced (see LayerMAC).
ARCHITECTURES = {
    "eyeriss": Architecture(
        title="Eyeriss-like row-stationary array (168 PEs, 65 nm)", mac_tech_node=65e-9,
        partial_sum_memories=("OutputScratchpad",),
        component_groups={"MainMemory": "dram", "GlobalBuffer": "global_buffer", "InputScratchpad": "scratchpad",
                          "WeightScratchpad": "scratchpad", "OutputScratchpad": "scratchpad", "MAC": "mac"},
        # Eyeriss v1 (Chen et al., JSSC 2017): zero-flagged inputs gate the weight read and the MAC; activations
        # run-length coded with 5-bit zero runs. Each PE's three scratchpads feed its MAC one value per MAC;
        # a PE skips among the inputs its 12 x 16-bit input scratchpad holds; the example clocks at 200 MHz.
        sparse=sparsity.SparseHardware(
            input_port="InputScratchpad", weight_port="WeightScratchpad", output_port="OutputScratchpad",
            compressed=("MainMemory", "GlobalBuffer"), partial_sum_levels=("OutputScratchpad",),
            lane_components=("InputScratchpad", "WeightScratchpad", "OutputScratchpad", "MAC"),
            window_bits=12 * 16, clock_hz=200e6, formats=(sparsity.rle(5),))),
    "tpu_v4i": Architecture(
        title="TPU-v4i-like core: four 128x128 systolic arrays (7 nm)", mac_tech_node=7e-9,
        partial_sum_memories=("LocalBuffer",),
        component_groups={"MainMemory": "dram", "GlobalBuffer": "global_buffer", "LocalBuffer": "scratchpad",
                          "Register": "scratchpad", "MAC": "mac"},
        # A weight-stationary systolic array: each PE's weight register feeds its MAC; inputs and partial sums
        # pass between PEs in lock-step (one input register per PE, no buffer: a window of one value, see
        # sparsity.lane_time_fraction). Activations held as a bitmask and nonzeros (SparTen, Gondimalla et al.,
        # MICRO 2019) in the memories above the arrays; partial sums accumulate dense in the local buffers.
        sparse=sparsity.SparseHardware(
            input_port=None, weight_port="Register", output_port=None,
            compressed=("MainMemory", "GlobalBuffer", "LocalBuffer"), partial_sum_levels=("LocalBuffer",),
            lane_components=("Register", "MAC"), window_bits=None, clock_hz=1.05e9,
            formats=(sparsity.BITMASK,))),
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
    """The example architecture with a LayerMAC of this workload's operand widths, and the workload
    (STUDY_ARCHS: the accelerating-NeRFs study's Eyeriss, see study_spec)."""
    import accelforge as af

    if arch_name in STUDY_ARCHS:
        return study_spec(workload, delay_first=STUDY_ARCHS[arch_name])
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


def study_spec(workload: dict, delay_first: bool = False):
    """The Eyeriss the accelerating-NeRFs study configured (its designs/eyeriss_like/arch/eyeriss_like.yaml):
    AccelForge's Eyeriss example (168 PEs; 1 Mbit global buffer; 12, 192 and 16-entry 16-bit input, weight
    and partial-sum scratchpads; LPDDR4), which it matches, at the study's 45 nm, with the example's own
    integer MAC 16 bits wide (the study's `intmac`, datawidth 16) and 16-bit partial sums (its word-bits);
    the global buffer's bandwidth is the study's 16 words read and 16 written per cycle (four 64-bit
    accesses each), and DRAM's bandwidth is unbounded, as the study left it (no bandwidth given: Timeloop
    reports "Read bandwidth: -" and no throttling). Its 14 x 12 PE array had no dataflow constraints (its
    mappings spread the output rank over both axes), so neither axis is tied to a reused tensor here.
    The mapper finds the lowest energy (hw_eval's objective) or, delay_first, the lowest latency and then
    energy (the study's Timeloop mapper, whose log upgrades on utilization first)."""
    import accelforge as af

    spec = af.Spec.from_yaml(af.examples.arches.eyeriss)
    spec.workload = af.Workload(**workload)
    spec.arch.extra_attributes_for_all_component_models["tech_node"] = 45e-9
    spec.arch.nodes["MainMemory"].total_latency = "0"
    spec.arch.nodes["GlobalBuffer"].total_latency = "max(a.n_calls for a in actions) / 4 / 200e6"
    for axis in spec.arch.nodes["ProcessingElement"].spatial:
        axis.reuse, axis.may_reuse = "Nothing", "All"
    mac = spec.arch.nodes["MAC"]
    mac.extra_attributes_for_component_model["multiplier_width"] = 16
    mac.extra_attributes_for_component_model["adder_width"] = 16
    metrics = af.mapper.Metrics
    spec.mapper.metrics = metrics.LATENCY | metrics.ENERGY if delay_first else metrics.ENERGY
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
    if len(mapping) > 1:  # several objectives give a Pareto front: take the fastest, then the least energy
        latency, energy = mapping.latency(list_if_one_mapping=True), mapping.energy(list_if_one_mapping=True)
        mapping = mapping[min(range(len(mapping)), key=lambda i: (latency[i], energy[i]))]
    return mapping_result(mapping, workload, spec)


def bits_per_action(spec) -> dict[str, dict[str, float]]:
    """Each component's bits per read and write, as the spec gives them (the default expression: 1 bit)."""
    per_component = {}
    for node in spec.arch.nodes:
        for node_action in getattr(node, "actions", None) or []:
            bits = getattr(node_action, "bits_per_action", None)
            per_component.setdefault(node.name, {})[node_action.name] = bits if isinstance(bits, (int, float)) else 1
    return per_component


def output_elements(workload: dict) -> dict[str, int]:
    """Each einsum's output elements: the product of its output's ranks' sizes."""
    sizes = {rank: int(bound.split("<")[-1]) for rank, bound in workload["iteration_space_shape"].items()}
    return {e["name"]: math.prod(sizes[index] for index in next(a for a in e["tensor_accesses"] if a.get("output"))
                                 ["projection"].values()) for e in workload["einsums"]}


def mapping_result(mapping, workload: dict, spec=None) -> dict:
    """What the cache keeps of a mapping: energy by component, MAC energy by einsum, latency and MACs, and for
    the sparsity model every action (einsum, component, tensor, action, count, energy; leakage has tensor
    None), each (einsum, component)'s latency, each einsum's input, weight and output tensor and bits, its
    output's elements and (with the spec) each component's bits per action."""
    per_einsum_component = mapping.energy(per_component=True, per_einsum=True)
    energy_j: dict[str, float] = {}
    for (_, component), joules in per_einsum_component.items():
        energy_j[component] = energy_j.get(component, 0.0) + float(joules)
    counts = mapping.actions(per_einsum=True, per_component=True, per_tensor=True)
    detail = mapping.energy(per_einsum=True, per_component=True, per_tensor=True, per_action=True)
    actions = [[einsum, component, tensor, action, float(counts.get((einsum, component, tensor, action), 0.0)),
                float(joules)] for (einsum, component, tensor, action), joules in detail.items()]
    actions += [[einsum, component, tensor, action, float(n), 0.0]  # counted, but costing nothing
                for (einsum, component, tensor, action), n in counts.items()
                if (einsum, component, tensor, action) not in detail and n]
    return {
        "energy_j": energy_j,
        "mac_energy_j": {e["name"]: float(per_einsum_component[e["name"], "MAC"]) for e in workload["einsums"]},
        "latency_s": float(mapping.latency()),
        "macs": int(sum(n for (e, c, a), n in mapping.actions(per_einsum=True).items() if c == "MAC")),
        "actions": actions,
        "component_latency_s": [[e, c, float(seconds)]
                                for (e, c), seconds in mapping.latency(per_einsum=True, per_component=True).items()],
        "roles": {e["name"]: e["renames"] for e in workload["einsums"]},
        "bits": {a["name"]: a["bits_per_value"] for e in workload["einsums"] for a in e["tensor_accesses"]},
        "output_elements": output_elements(workload),
        "bits_per_action": bits_per_action(spec) if spec is not None else {},
    }


def sparse_tile(result: dict) -> sparsity.Tile:
    """A cached mapping as the sparsity model reads it."""
    return sparsity.Tile(actions=[tuple(a) for a in result["actions"]],
                         latency_s={(e, c): s for e, c, s in result["component_latency_s"]},
                         roles=result["roles"], bits=result["bits"], output_elements=result["output_elements"],
                         bits_per_action=result["bits_per_action"])


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


WEIGHTS_MEASURED = "measured"
WEIGHTS_ASSUMED_DENSE = "assumed dense: layers.json has no weight_density"


def field_densities(layers: list[dict]) -> dict[str, sparsity.Densities]:
    """Each einsum's operand densities: its input's (1 - input_sparsity), its weight's (weight_density; 1 where
    layers.json lacks it, as older runs' do), and its stored output's, which is what the next layer reads
    (the input density of a reader that takes it as it is, else of one that concatenates it; 1 for a final
    output). The model takes the product of input and weight density (independence)."""
    sources = layer_inputs(layers)
    densities = {}
    for j, layer in enumerate(layers):
        readers = [layers[i] for i, source in enumerate(sources) if source == j]
        readers.sort(key=lambda reader: reader["in_features"] != layer["out_features"])  # plain readers first
        densities[einsum_name(layer)] = sparsity.Densities(
            input=1.0 - layer["input_sparsity"], weight=layer.get("weight_density", 1.0),
            output=1.0 - readers[0]["input_sparsity"] if readers else 1.0)
    return densities


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
            "energy_without_grid_j": energy_without_grid[design],
        })
    return rows


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    atomic_write(path, buffer.getvalue())


DESIGN_TITLES = {"dense": "dense", "gating": "gating", "skipping": "skipping + compressed activations"}


def markdown_table(arch_name: str, rows: list[dict]) -> str:
    """Energy, latency and EDP per frame of each run under each design, side by side, with each one's ratio
    against dense exp1; then the densities each run's sparse designs used."""
    by_run = {}
    for r in rows:
        by_run.setdefault(r["run"], {})[r["design"]] = r
    reference = next((designs["dense"] for designs in by_run.values()
                      if designs["dense"]["experiment"] == "exp1"), None)

    def cell(row, key):
        ratio = f" ({row[key] / reference[key]:.3f}×)" if reference else ""
        return f"{row[key]:.4g}{ratio}"

    lines = [
        f"# {ARCHITECTURES[arch_name].title}",
        "",
        f"Per {FRAME} frame; a model, not a silicon measurement (README.md, \"Accelerator evaluation\"). "
        "Three designs: *dense* (AccelForge's mapping as it is), *gating* (a zero operand gates its MAC and the "
        "operand reads that feed it: energy saved, cycles not), *skipping* (activations compressed in memory, "
        "zero MACs skipped: energy and cycles saved, with the PE array's load imbalance). In brackets: the "
        "ratio to dense exp1" + ("" if reference else " (n/a: no exp1 run)") + ".",
    ]
    for key, title in (("energy_per_frame_j", "Energy per frame (J)"), ("latency_per_frame_s", "Latency per frame (s)"),
                       ("edp_j_s", "Energy-delay product (J·s)")):
        lines += ["", f"## {title}", "", "| run | experiment | precision | " + " | ".join(DESIGN_TITLES.values()) + " |",
                  "|---|---|---|" + "---|" * len(DESIGNS)]
        for run, designs in by_run.items():
            first = designs["dense"]
            lines.append(f"| {run} | {first['experiment']} | {first['precision']} | "
                         + " | ".join(cell(designs[d], key) for d in DESIGNS) + " |")
    lines += ["", "## Densities the sparse designs used", "",
              "MAC-weighted over the layers. *effectual*: input × weight density, the fraction of MACs with both "
              "operands nonzero under independence; *joint (measured)*: the same fraction counted on the run's "
              "test rays (layers.json), the check of independence. *MAC time*: skipping's MAC cycles against "
              "dense, with the PE array's load imbalance and under perfect balance. *zero-gating (ideal)*: the "
              "share of dense energy in MACs whose input is zero.", "",
              "| run | input | weight | effectual | joint (measured) | MAC time, skipping | MAC time, balanced "
              "| zero-gating (ideal) | weights |",
              "|---|---|---|---|---|---|---|---|---|"]
    for run, designs in by_run.items():
        r = designs["skipping"]
        joint = f"{r['joint_density_measured']:.3f}" if r["joint_density_measured"] != "" else "not measured"
        lines.append(f"| {run} | {r['input_density']:.3f} | {r['weight_density']:.3f} | {r['effectual_density']:.3f} "
                     f"| {joint} | {r['mac_time_frac']:.3f} | {r['mac_time_frac_balanced']:.3f} "
                     f"| {100 * r['zero_gating_saving_frac']:.1f} % | {r['weight_density_source']} |")
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
    rows = [row for run, arch_name, fields in planned for row in frame_rows(run, arch_name, fields)]
    write_csv(out_dir / "results.csv", rows)
    for arch_name in arch_names:
        atomic_write(out_dir / f"{arch_name}.md",
                     markdown_table(arch_name, [r for r in rows if r["arch"] == arch_name]))
    return rows


def add_to_wandb_runs(runs_dir: Path, rows: list[dict]) -> dict[str, str]:
    """Each run's rows added to the W&B run that trained it (runlog.add_to_run); returns run -> W&B id for
    the runs that had one."""
    ids = {}
    for run in dict.fromkeys(row["run"] for row in rows):
        run_rows = [row for row in rows if row["run"] == run]
        if wandb_id := runlog.add_to_run(runs_dir / run, "hw_eval", run_rows, ("arch", "design"), WANDB_VALUES):
            ids[run] = wandb_id
    return ids


# --- Validation on the accelerating-NeRFs study's own case ----------------------------------------

# Shen and McClinton, "Accelerating NeRFs: Optimizing Neural Radiance Fields with Specialized Hardware
# Architectures" (MIT 6.5930, 2023; github.com/williamshen-nz/accelerating-nerfs): Timeloop with its sparse
# extensions on its Eyeriss, one FC layer at a time, 64 samples per layer (its layer shapes, N = 64).
STUDY_ARCHS = {"eyeriss_study": False, "eyeriss_study_delay_first": True}  # name -> the mapper's delay_first
STUDY_ROWS = 64
STUDY_INPUT_SPARSITY = 0.603  # its average over the FC layers whose inputs follow a ReLU (all but fc_1, fc_11)
# (layer, in, out, follows a ReLU): 8 x 256 with the encoded point (63) again at fc_6, the density head fc_9,
# the activation-free feature layer fc_10, the view layer fc_11 (feature + encoded direction, 27) and the RGB head.
STUDY_LAYERS = (("fc_1", 63, 256, False), ("fc_2", 256, 256, True), ("fc_3", 256, 256, True), ("fc_4", 256, 256, True),
                ("fc_5", 256, 256, True), ("fc_6", 319, 256, True), ("fc_7", 256, 256, True), ("fc_8", 256, 256, True),
                ("fc_9", 256, 1, True), ("fc_10", 256, 256, True), ("fc_11", 283, 128, False), ("fc_12", 128, 3, True))
# Its Eyeriss results for the MLP (its notebooks/Analyze Profile Results.ipynb, summed over the layers):
# dense, and compressed activations with skipping (eyeriss_like_onchip_compression): energy (J), cycles.
STUDY_REPORTED = {"dense": (650.93e-6, 568_192), "skipping": (316.71e-6, 227_813)}
# Of which fc_11 (input dense: it reads the activation-free fc_10): the sparse run's mapper found a mapping of
# the same cycles at a sixth of the energy, a change of mapping, not of sparsity.
STUDY_FC11 = {"dense": (315.54e-6, 36_224), "skipping": (52.32e-6, 36_224)}
STUDY_TARGET = 0.25  # within +-25 % of both of its ratios


def study_layers() -> list[dict]:
    """The study's workload as layers.json would record it: 16-bit operands, its average input sparsity after
    every ReLU, dense weights, one tile of 64 samples."""
    return [{"name": f"study.{name}", "in_features": n_in, "out_features": n_out, "weight_bits": 16,
             "input_bits": 16, "output_bits": 16, "input_sparsity": STUDY_INPUT_SPARSITY if relu else 0.0,
             "weight_density": 1.0, "samples_per_frame": STUDY_ROWS} for name, n_in, n_out, relu in STUDY_LAYERS]


def validate_study(out_dir: Path, jobs: int = 1) -> dict:
    """Model the study's workload on its Eyeriss, dense and under each design, and compare the dense ->
    skipping energy and cycle ratios with its own; writes <out_dir>/study_validation.md and returns the numbers.

    As the study did, each layer is its own workload (inputs from DRAM, outputs to DRAM, no fusion); layers of
    one shape share a mapping, and each takes its own densities. Both mapper objectives: hw_eval's (lowest
    energy) and the study's (lowest latency, then energy).
    """
    check_toolchain()
    layers = study_layers()
    densities = field_densities(layers)
    paths, jobs_by_path = {}, {}
    for arch_name in STUDY_ARCHS:
        for layer in layers:
            workload = field_workload([{**layer, "name": "study.fc"}], STUDY_ROWS)  # one name: one mapping per shape
            path = cache_path(arch_name, workload, 16, out_dir / ".cache")
            paths[arch_name, layer["name"]], jobs_by_path[path] = path, (arch_name, workload, 16)
    out_dir.mkdir(parents=True, exist_ok=True)
    map_missing(jobs_by_path, jobs)
    hw = ARCHITECTURES["eyeriss"].sparse
    variants = {"dense": ("dense", False), "gating": ("gating", False), "skipping": ("skipping", False),
                "skipping, perfect balance": ("skipping", True)}
    objectives = {"eyeriss_study": "lowest energy (hw_eval's)", "eyeriss_study_delay_first": "lowest latency, "
                  "then energy (the study's)"}
    per_layer = {(a, v): {} for a in STUDY_ARCHS for v in variants}
    for arch_name in STUDY_ARCHS:
        for layer in layers:
            tile = sparse_tile(read_json(paths[arch_name, layer["name"]]))
            d = {"fc": densities[einsum_name(layer)]}
            for variant, (design, balanced) in variants.items():
                result = sparsity.evaluate(design, hw, tile, d, balanced=balanced)
                per_layer[arch_name, variant][einsum_name(layer)] = (result.energy_total_j, result.latency_s * hw.clock_hz)
    totals = {key: tuple(sum(x[i] for x in values.values()) for i in (0, 1)) for key, values in per_layer.items()}
    ratios = {(a, v): (totals[a, "dense"][0] / e, totals[a, "dense"][1] / c) for (a, v), (e, c) in totals.items()}
    reported = {k: (STUDY_REPORTED["dense"][0] / STUDY_REPORTED[k][0], STUDY_REPORTED["dense"][1] / STUDY_REPORTED[k][1])
                for k in STUDY_REPORTED}
    lines = ["# hw_eval.py --validate-study: the accelerating-NeRFs study's MLP on its Eyeriss", "",
             f"{len(layers)} FC layers of 16-bit operands, {STUDY_ROWS} samples, input sparsity "
             f"{STUDY_INPUT_SPARSITY:.1%} after every ReLU (fc_1 and fc_11 dense), weights dense; each layer mapped "
             "alone by AccelForge on the study's Eyeriss (hw_eval.study_spec) and costed by the sparsity model. "
             "Cycles at the Eyeriss clock.", "",
             "| mapper objective | design | energy (µJ) | cycles | energy ratio (dense / design) | cycle ratio "
             "| EDP ratio |", "|---|---|---|---|---|---|---|"]
    for (arch_name, variant), (joules, cycles) in totals.items():
        e_ratio, c_ratio = ratios[arch_name, variant]
        lines.append(f"| {objectives[arch_name]} | ours: {variant} | {joules * 1e6:.2f} | {cycles:,.0f} | {e_ratio:.2f}× "
                     f"| {c_ratio:.2f}× | {e_ratio * c_ratio:.2f}× |")
    for key, (joules, cycles) in STUDY_REPORTED.items():
        e_ratio, c_ratio = reported[key]
        lines.append(f"| the study's | study (Timeloop, sparse extensions): {key} | {joules * 1e6:.2f} | {cycles:,} "
                     f"| {e_ratio:.2f}× | {c_ratio:.2f}× | {e_ratio * c_ratio:.2f}× |")
    for arch_name in STUDY_ARCHS:
        lines += ["", f"Per layer, mapper objective {objectives[arch_name]} (energy µJ, cycles):", "",
                  "| layer | input density | dense energy | skipping energy | ratio | dense cycles | skipping cycles "
                  "| ratio | cycles, perfect balance |", "|---|---|---|---|---|---|---|---|---|"]
        for layer in layers:
            name = einsum_name(layer)
            (de, dc), (se, sc), (_, bc) = (per_layer[arch_name, v][name]
                                           for v in ("dense", "skipping", "skipping, perfect balance"))
            lines.append(f"| {name} | {1 - layer['input_sparsity']:.3f} | {de * 1e6:.2f} | {se * 1e6:.2f} "
                         f"| {de / se:.2f}× | {dc:,.0f} | {sc:,.0f} | {dc / sc:.2f}× | {bc:,.0f} |")
    # Like for like: without fc_11, whose energy the study's sparse run changed by re-mapping it.
    reported_without = {k: tuple(STUDY_REPORTED[k][i] - STUDY_FC11[k][i] for i in (0, 1)) for k in STUDY_REPORTED}
    reported_without_ratio = tuple(reported_without["dense"][i] / reported_without["skipping"][i] for i in (0, 1))
    without = {(a, v): tuple((totals[a, "dense"][i] - per_layer[a, "dense"]["fc_11"][i])
                             / (totals[a, v][i] - per_layer[a, v]["fc_11"][i]) for i in (0, 1))
               for a in STUDY_ARCHS for v in variants}

    def verdict(ours, theirs):
        return "within" if abs(ours / theirs - 1) <= STUDY_TARGET else "outside"

    lines += ["", "Dense → skipping, the whole MLP and without fc_11 (its input is dense; the study's sparse run "
              "re-mapped it to a sixth of its dense energy at the same cycles, a change of mapping, not of sparsity):",
              "", "| | energy ratio | cycle ratio | vs the study (±25 %: energy, cycles) |", "|---|---|---|---|",
              f"| study, whole MLP | {reported['skipping'][0]:.2f}× | {reported['skipping'][1]:.2f}× | |",
              f"| study, without fc_11 | {reported_without_ratio[0]:.2f}× | {reported_without_ratio[1]:.2f}× | |"]
    within = {}
    for a in STUDY_ARCHS:
        for v in ("skipping", "skipping, perfect balance"):
            whole, part = ratios[a, v], without[a, v]
            within[a, v] = {"whole": tuple(verdict(o, t) for o, t in zip(whole, reported["skipping"])),
                            "without fc_11": tuple(verdict(o, t) for o, t in zip(part, reported_without_ratio))}
            lines += [f"| ours, {objectives[a]}, {v}, whole MLP | {whole[0]:.2f}× | {whole[1]:.2f}× "
                      f"| {', '.join(within[a, v]['whole'])} |",
                      f"| ours, {objectives[a]}, {v}, without fc_11 | {part[0]:.2f}× | {part[1]:.2f}× "
                      f"| {', '.join(within[a, v]['without fc_11'])} |"]
    lines += ["", "BENCHMARKS.md, \"Sparsity on the accelerator\", explains the differences."]
    text = "\n".join(lines) + "\n"
    atomic_write(out_dir / "study_validation.md", text)
    return {"totals": totals, "ratios": ratios, "reported": reported, "per_layer": per_layer, "without_fc_11": without,
            "reported_without_fc_11": reported_without_ratio, "within": within, "text": text}


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
    parser.add_argument("--validate-study", action="store_true",
                        help="model the accelerating-NeRFs study's MLP on its Eyeriss and compare with its sparse "
                             "results (writes <out>/study_validation.md), and exit")
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
        if args.validate_study:
            print(validate_study(Path(args.out), args.jobs)["text"], end="")
            return
        rows = evaluate(Path(args.runs), arch_names, Path(args.out), args.tile, args.jobs)
        add_to_wandb_runs(Path(args.runs), rows)
    assumed = sorted({r["run"] for r in rows if r["weight_density_source"] != WEIGHTS_MEASURED})
    if assumed:
        print(f"note: {', '.join(assumed)}: layers.json has no weight_density (trained before it was recorded); "
              f"their weights are taken as dense (density 1) in the gating and skipping designs")
    print(f"{len(rows)} results -> {Path(args.out) / 'results.csv'}, "
          + ", ".join(str(Path(args.out) / f"{a}.md") for a in arch_names))


if __name__ == "__main__":
    main()
