"""The accelerators a workload is mapped onto: AccelForge's example architectures with each layer's MAC
(accel/components.py), how each exploits zeros (accel/sparsity.py's SparseHardware), and the Eyeriss that
the accelerating-NeRFs study configured (accel/study.py compares with it)."""

from dataclasses import dataclass

from accel import sparsity
from accel.components import FloatMAC, LayerMAC, accumulator_bits_expression
from accel.workloads import FLOAT_TENSORS


@dataclass(frozen=True)
class Architecture:
    title: str
    mac_tech_node: float  # metres; the example's own node (Eyeriss) or the chip's (TPU v4i, 7 nm)
    partial_sum_memories: tuple[str, ...]  # memories that hold outputs while they accumulate
    component_groups: dict[str, str]  # AccelForge component -> results.ENERGY_GROUPS (others: other)
    sparse: sparsity.SparseHardware  # how the gating and skipping designs exploit zeros (README: the sources)

    @property
    def tech_node_nm(self) -> float:
        """The node its MACs are modelled at, in nm (results.csv's tech_node_nm)."""
        return round(self.mac_tech_node * 1e9, 3)

    @property
    def clock_mhz(self) -> float:
        """Its clock, in MHz (results.csv's clock_mhz): the example's MAC throughput, which the sparse model's
        cycles take too."""
        return self.sparse.clock_hz / 1e6


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
# The accelerating-NeRFs study's Eyeriss (study_spec), by the mapper objective: name -> delay_first.
STUDY_ARCHS = {"eyeriss_study": False, "eyeriss_study_delay_first": True}


def build_spec(arch_name: str, workload: dict, int_accumulator: int):
    """The example architecture with a LayerMAC of each einsum's operand widths and kind (float or integer: the
    einsum's FLOAT_TENSORS rename), and the workload (STUDY_ARCHS: the accelerating-NeRFs study's Eyeriss, see
    study_spec)."""
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
        accumulator_bits=accumulator, float_operands=f"len({FLOAT_TENSORS}) > 0")
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
