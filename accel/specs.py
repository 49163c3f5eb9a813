"""AccelForge specs of the architectures (accel.architectures): the architecture's file loaded, its compute
component replaced by a LayerMAC of each einsum's operands, its partial sums as wide as the accumulator; and
what the project needs from a file, found in the file (Structure, file_architecture).

What is found in a file (docs/accelerators.md, "Your own architecture"):
- the compute component: the !Compute node named MAC, else the last (innermost) !Compute node; none: refused;
- the memory levels: the !Memory nodes, outermost first: the first is results.csv's dram, the second its
  global_buffer, the rest scratchpad;
- where partial sums accumulate: the innermost memory whose `tensors: {keep: ...}` can hold the output
  (names output or All, or is a complement such as ~MainMemory); its outputs are held accumulator-wide;
- its node: `tech_node` in the arch's extra_attributes_for_all_component_models or the compute's
  extra_attributes_for_component_model; none: refused; its clock: the compute's latency `... / <Hz>` or its
  compute action's throughput (else none stated);
- zeros: a file's architecture is costed dense only (no documented zero handling).
"""

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from accel import cim
from accel.architectures import ARCHITECTURES, STUDY_ARCHS, Architecture, is_file
from accel.components import FloatMAC, LayerMAC, accumulator_bits_expression
from accel.workloads import FLOAT_TENSORS
from utils import UserError

GROUPS_BY_DEPTH = ("dram", "global_buffer")  # the outermost memories' results.ENERGY_GROUPS; deeper: scratchpad


@dataclass(frozen=True)
class Structure:
    compute: str
    memories: tuple[str, ...]  # outermost first
    partial_sums: str  # the memory whose outputs are held accumulator-wide
    array: tuple[str, ...] = ()  # a compute-in-memory macro's: its cells, drivers, converters and adders

    def groups(self) -> dict[str, str]:
        """Component -> results.ENERGY_GROUPS (components missing here: other); a macro's array is its MACs."""
        groups = {
            m: GROUPS_BY_DEPTH[i] if i < len(GROUPS_BY_DEPTH) else "scratchpad" for i, m in enumerate(self.memories)
        }
        return groups | dict.fromkeys(self.array, "mac") | {self.compute: "mac"}


def can_hold_output(keep) -> bool:
    text = str(keep or "")
    return "output" in text or "All" in text or text.strip().startswith("~")


def structure(spec, source: str) -> Structure:
    """The compute component, memory levels and partial-sum memory of a spec (module docstring)."""
    nodes = list(spec.arch.nodes)
    computes = [n.name for n in nodes if type(n).__name__ == "Compute"]
    # A compute-in-memory macro computes in its array: the cells (component_class MemoryCell) and the !Toll nodes
    # (row and column drivers, ADCs, shift-and-add) between them and its buffers.
    array = tuple(
        n.name for n in nodes if type(n).__name__ == "Toll" or getattr(n, "component_class", None) == "MemoryCell"
    )
    memories = tuple(n.name for n in nodes if type(n).__name__ == "Memory" and n.name not in array)
    if not computes:
        raise UserError(
            f"{source}: no compute component (an AccelForge !Compute node, e.g. the MAC); "
            f"hw_eval.py needs one to charge each layer's MACs"
        )
    if not memories:
        raise UserError(f"{source}: no memory level (an AccelForge !Memory node) to hold the layers' tensors")
    holders = [n.name for n in nodes if n.name in memories and can_hold_output(getattr(n.tensors, "keep", None))]
    return Structure(
        compute="MAC" if "MAC" in computes else computes[-1],
        memories=memories,
        partial_sums=(holders or memories)[-1],
        array=array,
    )


def yaml_path(arch: Architecture) -> Path:
    import accelforge as af

    return Path(arch.yaml) if is_file(arch.yaml) else Path(getattr(af.examples.arches, arch.yaml))


def load(path: Path):
    """An AccelForge spec from an architecture file; one that AccelForge cannot read is one line."""
    import accelforge as af

    try:
        return af.Spec.from_yaml(path)
    except Exception as e:  # AccelForge's parse and validation errors are many kinds; each becomes one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path}: not an AccelForge architecture AccelForge can read ({first})") from None


def number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def file_clock_hz(compute) -> float | None:
    """The compute's clock as the file gives it: its latency `... / <Hz>`, else its compute action's throughput."""
    found = re.search(r"/\s*([0-9.]+(?:[eE][+-]?[0-9]+)?)\s*$", str(getattr(compute, "total_latency", "") or ""))
    if found:
        return float(found.group(1))
    rates = [number(getattr(a, "throughput", None)) for a in (compute.actions or []) if a.name == "compute"]
    return next((r for r in rates if r and r != float("inf")), None)


@functools.cache
def file_architecture(path: str) -> Architecture:
    """An architecture file as an Architecture named by its stem: its node and clock from the file (module
    docstring), dense only. A file without a compute component, a memory or a node is one line."""
    spec = load(Path(path))
    found = structure(spec, path)
    compute = spec.arch.nodes[found.compute]
    node = number(spec.arch.extra_attributes_for_all_component_models.get("tech_node"))
    node = node or number((compute.extra_attributes_for_component_model or {}).get("tech_node"))
    if node is None:
        raise UserError(
            f"{path}: no technology node; add `extra_attributes_for_all_component_models: "
            f"{{tech_node: 7e-9}}` (metres) to its arch"
        )
    clock = file_clock_hz(compute)
    return Architecture(
        name=Path(path).stem,
        title=f"{Path(path).stem} (from {path})",
        yaml=path,
        mac_tech_node=node,
        clock_hz=clock,
        node_source="the file",
        clock_source="the file" if clock else "not stated in the file",
    )


def architecture(key: str) -> Architecture:
    """A built-in architecture by name, or an architecture file by path (accel.architectures.selected)."""
    return file_architecture(key) if is_file(key) else ARCHITECTURES[key]


def build_spec(arch_key: str, workload: dict, int_accumulator: int):
    """The architecture with a LayerMAC of each einsum's operand widths and kind (float or integer: the
    einsum's FLOAT_TENSORS rename) and the architecture's PE, and the workload (STUDY_ARCHS: the
    accelerating-NeRFs study's Eyeriss, see study_spec; a compute-in-memory design: cim.build_spec)."""
    import accelforge as af

    if arch_key in STUDY_ARCHS:
        return study_spec(workload, delay_first=STUDY_ARCHS[arch_key])
    arch = architecture(arch_key)
    if arch.cim:
        return cim.build_spec(arch.yaml, workload)
    spec = load(yaml_path(arch))
    found = structure(spec, arch.yaml)
    spec.workload = af.Workload(**workload)
    spec.config.add_component_models(LayerMAC, FloatMAC)
    accumulator = accumulator_bits_expression(int_accumulator)
    mac = spec.arch.nodes[found.compute]
    mac.component_class = "LayerMAC"
    for mac_action in mac.actions:
        mac_action.energy = None  # from LayerMAC; the file's throughput stays
    if arch.mac_latency_from_clock:
        mac.total_latency = f"sum(a.n_calls for a in actions) / {arch.clock_hz!r}"
    mac.extra_attributes_for_component_model = type(mac.extra_attributes_for_component_model)(
        tech_node=arch.mac_tech_node,
        weight_bits="weight.bits_per_value",
        input_bits="input.bits_per_value",
        accumulator_bits=accumulator,
        float_operands=f"len({FLOAT_TENSORS}) > 0",
        pe=repr(arch.pe),
    )  # quoted: a string, not an expression
    for component, action_name, joules in arch.memory_energy:
        node = spec.arch.nodes[component]
        node.component_class = None
        node.leak_power, node.area = 0, 0
        node_action = next(a for a in node.actions if a.name == action_name)
        node_action.energy = joules
        if node_action.throughput is None:  # snowcat's Dummy gives none: unbounded, as simple.yaml's inf
            node_action.throughput = float("inf")
    spec.arch.nodes[found.partial_sums].bits_per_value = {"output": accumulator}
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
