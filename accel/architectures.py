"""The accelerators a workload is mapped onto: every digital architecture AccelForge ships, by name, with each
layer's MAC (accel/components.py), its technology node and clock (from its file, or an assumption with its
source), how it exploits zeros where that is documented (accel/sparsity.py's SparseHardware; else dense only),
ternary-native variants of each (sign-select-and-add PEs), AccelForge's compute-in-memory designs (accel/cim.py),
and an architecture file of one's own
(`--arch path/to/arch.yaml`, accel/specs.py). accel/specs.py turns one into an AccelForge spec;
docs/accelerators.md tabulates them."""

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from accel import sparsity
from utils import UserError

MULTIPLIER_PE, TERNARY_PE = "multiplier", "ternary"  # Architecture.pe: components.LayerMAC's `pe`


@dataclass(frozen=True)
class Architecture:
    name: str  # results.csv's arch: the example's name, a variant's, or an architecture file's stem
    title: str
    yaml: str  # an AccelForge example's name (accelforge.examples.arches.<yaml>) or an architecture file's path
    mac_tech_node: float  # metres
    clock_hz: float | None  # the MAC clock; None: the file gives none (clock_mhz blank)
    node_source: str  # where the node comes from: the file, or the assumption and its source
    clock_source: str
    sparse: sparsity.SparseHardware | None = None  # None: no documented zero handling, dense only
    # (component, action, J per bit) set over the file's own: the unit-cost examples' memories.
    memory_energy: tuple[tuple[str, str, float], ...] = ()
    mac_latency_from_clock: bool = False  # the MAC's latency set to its actions over clock_hz (file gives none)
    pe: str = MULTIPLIER_PE  # TERNARY_PE: ternary layers sign-select and add (components.LayerMAC)
    cim: bool = False  # a compute-in-memory design (accel/cim.py): no LayerMAC, the file's own macro

    @property
    def tech_node_nm(self) -> float:
        """The node its MACs are modelled at, in nm (results.csv's tech_node_nm)."""
        return round(self.mac_tech_node * 1e9, 3)

    @property
    def clock_mhz(self) -> float | str:
        """Its clock, in MHz (results.csv's clock_mhz); "" where the file states none."""
        return "" if self.clock_hz is None else self.clock_hz / 1e6

    @property
    def designs(self) -> tuple[str, ...]:
        """The designs it is costed under: all three where its zero handling is documented, else dense."""
        return sparsity.DESIGNS if self.sparse is not None else ("dense",)

    def sparse_model(self, compute: str = "MAC") -> sparsity.SparseHardware:
        """Its SparseHardware, or for a dense-only one a model that exploits no zeros (its dense design)."""
        if self.sparse is not None:
            return self.sparse
        return sparsity.SparseHardware(
            input_port=None,
            weight_port=None,
            output_port=None,
            compressed=(),
            partial_sum_levels=(),
            lane_components=(),
            window_bits=None,
            clock_hz=self.clock_hz or 1.0,
            formats=(),
            mac=compute,
        )


# The per-bit energies AccelForge's own nvdla.yaml and tpu_v4i.yaml take from the TPU v4 paper (Jouppi et al.,
# ISCA 2023, 7 nm): DRAM 7.03 pJ, a 4 MB-class SRAM buffer 0.249 pJ read and 0.293 pJ written. The unit-cost
# examples (simple, snowcat: 1 J per access) get these, at the same 7 nm and NVDLA's 1 GHz.
TPU_V4_PER_BIT = (
    ("MainMemory", "read", 7.03e-12),
    ("MainMemory", "write", 7.03e-12),
    ("GlobalBuffer", "read", 0.249e-12),
    ("GlobalBuffer", "write", 0.293e-12),
)
UNIT_COST = (
    "7 nm assumed: the file is a unit-cost model (1 J per access, no node); its memories are charged "
    "nvdla.yaml's TPU v4 per-bit energies (7 nm)"
)
NVDLA_CLOCK = "1 GHz assumed: nvdla.yaml's clock (its MAC throughput 1e9 and its DRAM bandwidth comment)"

# AccelForge's examples `accelforge.examples.arches.<name>`, with the MAC replaced (see LayerMAC).
SHIPPED = (
    Architecture(
        name="eyeriss",
        title="Eyeriss-like row-stationary array (168 PEs, 65 nm)",
        yaml="eyeriss",
        mac_tech_node=65e-9,
        clock_hz=200e6,
        node_source="the file (tech_node 65e-9)",
        clock_source="the file (MAC latency: its actions over 200e6)",
        # Eyeriss v1 (Chen et al., JSSC 2017): zero-flagged inputs gate the weight read and the MAC; activations
        # run-length coded with 5-bit zero runs. Each PE's three scratchpads feed its MAC one value per MAC;
        # a PE skips among the inputs its 12 x 16-bit input scratchpad holds; the example clocks at 200 MHz.
        sparse=sparsity.SparseHardware(
            input_port="InputScratchpad",
            weight_port="WeightScratchpad",
            output_port="OutputScratchpad",
            compressed=("MainMemory", "GlobalBuffer"),
            partial_sum_levels=("OutputScratchpad",),
            lane_components=("InputScratchpad", "WeightScratchpad", "OutputScratchpad", "MAC"),
            window_bits=12 * 16,
            clock_hz=200e6,
            formats=(sparsity.rle(5),),
        ),
    ),
    Architecture(
        name="tpu_v4i",
        title="TPU-v4i-like core: four 128x128 systolic arrays (7 nm)",
        yaml="tpu_v4i",
        mac_tech_node=7e-9,
        clock_hz=1.05e9,
        node_source="7 nm assumed: the file has no node; TPU v4i's (Jouppi et al., ISCA 2021), whose per-access "
        "energies it takes",
        clock_source="the file (MAC throughput 1.05e9)",
        # A weight-stationary systolic array: each PE's weight register feeds its MAC; inputs and partial sums
        # pass between PEs in lock-step (one input register per PE, no buffer: a window of one value, see
        # sparsity.lane_time_fraction). Activations held as a bitmask and nonzeros (SparTen, Gondimalla et al.,
        # MICRO 2019) in the memories above the arrays; partial sums accumulate dense in the local buffers.
        sparse=sparsity.SparseHardware(
            input_port=None,
            weight_port="Register",
            output_port=None,
            compressed=("MainMemory", "GlobalBuffer", "LocalBuffer"),
            partial_sum_levels=("LocalBuffer",),
            lane_components=("Register", "MAC"),
            window_bits=None,
            clock_hz=1.05e9,
            formats=(sparsity.BITMASK,),
        ),
    ),
    Architecture(
        name="simba",
        title="Simba-like chiplet: 16 PEs of 8 x 8 vector MACs (16 nm)",
        yaml="simba",
        mac_tech_node=16e-9,
        clock_hz=4.01e12 / 2 / 1024,
        node_source="the file (tech_node 16e-9)",
        clock_source="1.96 GHz assumed: the file gives no MAC rate; Simba's 4.01 TOPS peak per chip over its "
        "1024 MACs (Zimmer et al., VLSI 2019 / JSSC 2020)",
        mac_latency_from_clock=True,
    ),
    Architecture(
        name="nvdla",
        title="NVDLA-like: 32 x 192 MACs under a 64 kB buffer",
        yaml="nvdla",
        mac_tech_node=7e-9,
        clock_hz=1e9,
        node_source="7 nm assumed: the file has no node; its per-access energies are tpu_v4i.yaml's (TPU v4, 7 nm)",
        clock_source=NVDLA_CLOCK,
    ),
    Architecture(
        name="snowcat",
        title="Snowcat: DRAM, an unbounded buffer and one MAC (Orojenesis bound model)",
        yaml="snowcat",
        mac_tech_node=7e-9,
        clock_hz=1e9,
        node_source=UNIT_COST,
        clock_source=NVDLA_CLOCK,
        memory_energy=TPU_V4_PER_BIT,
        mac_latency_from_clock=True,
    ),
    Architecture(
        name="simple",
        title="Simple: DRAM, an unbounded buffer and one MAC",
        yaml="simple",
        mac_tech_node=7e-9,
        clock_hz=1e9,
        node_source=UNIT_COST,
        clock_source=NVDLA_CLOCK,
        memory_energy=TPU_V4_PER_BIT,
        mac_latency_from_clock=True,
    ),
)


def cim_design(name: str, title: str, node_nm: float, cycle_s: float) -> Architecture:
    """A compute-in-memory design AccelForge ships (accel/cim.py), its node and clock as AccelForge evaluates the
    file's tech_node and cycle_period (cim.evaluated_variables; a test checks them), dense only."""
    return Architecture(
        name=name,
        title=f"{title} ({node_nm:g} nm compute-in-memory macro)",
        yaml=name,
        mac_tech_node=node_nm * 1e-9,
        clock_hz=1 / cycle_s,
        node_source=f"the file (tech_node {node_nm:g}e-9)",
        clock_source=f"the file (1 / cycle_period, {cycle_s:.4g} s, evaluated for its default workload)",
        cim=True,
    )


# AccelForge's compute-in-memory designs that load and map here (docs/accelerators.md, "Compute-in-memory").
CIM = (
    cim_design(
        "isaac_isca_2016", "ISAAC: RRAM crossbars, 2 bits per cell, 8-bit ADCs (Shafiee et al., ISCA 2016)", 32, 1e-9
    ),
    cim_design("raella_isca_2023", "RAELLA: RRAM, 2T2R cells, 7-bit ADCs (Andrulis et al., ISCA 2023)", 32, 1e-9),
    cim_design("jia_jssc_2020", "Bit-scalable SRAM in-memory computing (Jia et al., JSSC 2020)", 65, 1.35e-6),
    cim_design(
        "sinangil_jssc_2021",
        "7 nm SRAM macro, 4-bit inputs, weights and outputs (Sinangil et al., JSSC 2021)",
        7,
        5.5e-9,
    ),
    cim_design(
        "wang_vlsi_2022", "SRAM macro with 8-bit DACs and ADCs (Wang et al., VLSI 2022)", 22, 4.593214812770331e-09
    ),
    cim_design("colonnade_jssc_2021", "Colonnade: digital bit-serial SRAM (Kim et al., JSSC 2021)", 65, 7.2e-9),
    cim_design("albireo_isca_2021", "Albireo: photonic (Shiflett et al., ISCA 2021)", 7, 2e-10),
    cim_design("neurram_nature_2022", "NeuRRAM: RRAM (Wan et al., Nature 2022)", 130, 1.4485714285714284e-06),
    cim_design("basic_analog", "Basic analog macro: 32 x 32 cells of 8 bits, 8-bit ADCs", 65, 1e-7),
)


def ternary_variant(arch: Architecture) -> Architecture:
    """The architecture with ternary-native PEs: a ternary layer's MAC is a sign select and an add
    (components.LayerMAC with pe=TERNARY_PE); every other layer's, and every memory, as the original."""
    return dataclasses.replace(
        arch,
        name=f"{arch.name}_ternary",
        pe=TERNARY_PE,
        title=f"{arch.title}, ternary-native PEs (sign-select and add)",
    )


ARCHITECTURES = (
    {arch.name: arch for arch in SHIPPED}
    | {f"{arch.name}_ternary": ternary_variant(arch) for arch in SHIPPED}
    | {arch.name: arch for arch in CIM}
)
DEFAULT_ARCHS = ("eyeriss", "tpu_v4i")  # make suite's set: the suite's time budget
# The accelerating-NeRFs study's Eyeriss (accel.specs.study_spec), by the mapper objective: name -> delay_first.
STUDY_ARCHS = {"eyeriss_study": False, "eyeriss_study_delay_first": True}


def is_file(key: str) -> bool:
    """Whether an --arch value names an architecture file rather than a built-in architecture."""
    return key.endswith((".yaml", ".yml")) or "/" in key


def selected(keys: list[str]) -> list[str]:
    """--arch's values as architecture keys: names, "all" (every built-in one), "cim" (the compute-in-memory ones)
    and files (absolute paths);
    an unknown name, a missing file or two of one name are one line."""
    out = []
    for key in keys:
        if key == "all":
            out += list(ARCHITECTURES)
        elif key == "cim":
            out += [arch.name for arch in CIM]
        elif is_file(key):
            if not Path(key).is_file():
                raise UserError(f"--arch {key}: no such architecture file")
            out.append(str(Path(key).resolve()))
        elif key in ARCHITECTURES:
            out.append(key)
        else:
            raise UserError(
                f"--arch {key}: unknown architecture; known: all, cim, {', '.join(ARCHITECTURES)}, "
                f"or an AccelForge architecture file (.yaml)"
            )
    out = list(dict.fromkeys(out))
    names = [Path(key).stem if is_file(key) else key for key in out]
    clash = sorted({name for name in names if names.count(name) > 1})
    if clash:
        raise UserError(
            f"--arch: two architectures named {', '.join(clash)} (a file is named by its stem); rename the file"
        )
    return out
