"""The MAC of each layer's operands (hwcomponents models), and the partial sums' width.

The architectures (accel/architectures.py) keep AccelForge's example memories; only their MAC is replaced by
LayerMAC, which takes the einsum's weight, input and accumulator widths and whether it multiplies floats (the
layer's measured format, accel.workloads.float_operands). docs/accelerators.md tabulates what each charges.
"""

import math

import precision
from accel.toolchain import toolchain_missing
from accel.workloads import FLOAT_TENSORS, float_operands

try:
    from hwcomponents import ActionCost, ComponentModel, action
    from hwcomponents.scaling import (
        tech_node_area,
        tech_node_energy,
        tech_node_latency,
        tech_node_leak,
        tech_node_throughput,
    )
    from hwcomponents_library import AladdinAdder, AladdinMultiplier
except ImportError as e:
    # hw_eval.py turns this into its one-line error; another importer gets the same advice.
    raise ImportError(toolchain_missing(e)) from e

FLOAT_ACCUMULATOR_BITS = 32  # fp8/fp16/bf16 products accumulate in fp32, as tensor cores and TPUs do

# Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, 45 nm:
# (energy in J, area in m^2) of one floating-point operation by operand width.
HOROWITZ_FLOAT_45NM = {
    ("multiply", 16): (1.1e-12, 1640e-12),
    ("multiply", 32): (3.7e-12, 7700e-12),
    ("add", 16): (0.4e-12, 1360e-12),
    ("add", 32): (0.9e-12, 4184e-12),
}
# Significand widths, the hidden bit included, of the float multipliers by operand width: fp32 (24), Horowitz's
# 16-bit (IEEE fp16, 11) and fp8 E4M3 (4; the format torchao's float8 training runs the forward pass in, which
# layers.json's "fp8" is; E5M2's 3-bit significand is charged as E4M3's).
SIGNIFICAND_BITS = {32: 24, 16: 11, 8: 4}


def significand_fit(width: int, fit: int) -> float:
    """Horowitz has no 8-bit float multiplier. A significand multiplier's array grows as the square of its
    width, and the rest (exponent adder, normalization, rounding) much less, so the multiplier's energy (fit=0)
    or area (fit=1) is taken as a + b * s^2 in the significand width s, through Horowitz's fp16 and fp32
    multipliers (which it reproduces exactly). For E4M3 this gives 0.50 pJ at 45 nm: 2.2x less than fp16's
    1.1 pJ, 2.5x Horowitz's int8 multiplier (0.2 pJ). Scaling fp16's energy by (4/11)^2 alone would give
    0.15 pJ, below int8's, against van Baalen et al. ("FP8 versus INT8 for efficient deep learning inference",
    arXiv 2303.17951, 2023), who find FP8 MACs 50-180 % less efficient than INT8 ones."""
    (low, high), s = (SIGNIFICAND_BITS[16], SIGNIFICAND_BITS[32]), SIGNIFICAND_BITS[width]
    at_low, at_high = HOROWITZ_FLOAT_45NM["multiply", 16][fit], HOROWITZ_FLOAT_45NM["multiply", 32][fit]
    return at_low + (at_high - at_low) * (s * s - low * low) / (high * high - low * low)


HOROWITZ_FLOAT_45NM["multiply", 8] = (significand_fit(8, 0), significand_fit(8, 1))


class FloatMAC(ComponentModel):
    """A floating-point multiplier and adder, from Horowitz (ISSCC 2014, 45 nm) scaled to tech_node; the 8-bit
    (fp8 E4M3) multiplier fitted to Horowitz's by significand width (significand_fit).

    bf16 takes fp16's numbers: Horowitz has no bf16, and its 8-bit significand multiplier is smaller
    than fp16's 11-bit one, so this overestimates bf16 a little.
    """

    component_name = "FloatMAC"
    priority = 0.9

    def __init__(self, tech_node: float, multiplier_width: int, adder_width: int):
        if ("multiply", multiplier_width) not in HOROWITZ_FLOAT_45NM or ("add", adder_width) not in HOROWITZ_FLOAT_45NM:
            raise ValueError(f"no float MAC data for {multiplier_width}-bit products and {adder_width}-bit sums")
        (multiply_j, multiply_m2), (add_j, add_m2) = (
            HOROWITZ_FLOAT_45NM["multiply", multiplier_width],
            HOROWITZ_FLOAT_45NM["add", adder_width],
        )
        super().__init__(leak_power=0.0, area=multiply_m2 + add_m2)
        self.energy_j = multiply_j + add_j
        self.tech_node = self.scale(
            "tech_node",
            tech_node,
            45e-9,
            area_scale_function=tech_node_area,
            energy_scale_function=tech_node_energy,
            latency_scale_function=tech_node_latency,
            throughput_scale_function=tech_node_throughput,
            leak_power_scale_function=tech_node_leak,
        )

    @action
    def compute(self) -> ActionCost:
        return ActionCost(energy=self.energy_j, throughput=1e9, latency=1e-9)


class LayerMAC(ComponentModel):
    """The MAC for one layer's operands: FloatMAC for float operands, else the hwcomponents library's Aladdin
    integer multiplier (linear in each operand's width) and adder (ISCA 2014, 40 nm). Whether the operands are
    floats is the layer's measured format (float_operands; None: decided by the input's width, as for runs from
    before formats were recorded), so an fp8 layer is charged as a float MAC, an int8 one as an integer MAC.

    pe="ternary" (a ternary-native PE, accel.architectures.ternary_variant): an integer layer whose weights take
    at most TERNARY_SELECT_BITS bits (-1, 0, +1) has no multiplier: the weight selects +x, -x (or gates the add
    for 0) and the accumulator adds it (ternary_select_parts). Every other layer's MAC is the same as pe="multiplier".

    Leakage: none for any format. Horowitz's float numbers are dynamic energy only, so the Aladdin parts' leakage
    is left out too (scale_leak_power(0)): every format is charged on the same basis, per MAC action."""

    component_name = "LayerMAC"
    priority = 0.9

    def __init__(
        self,
        tech_node: float,
        weight_bits: int,
        input_bits: int,
        accumulator_bits: int,
        float_operands: bool | None = None,
        pe: str = "multiplier",
    ):
        self.is_float = precision.is_float(input_bits) if float_operands is None else bool(float_operands)
        if pe not in ("multiplier", "ternary"):
            raise ValueError(f"unknown PE {pe!r}; expected multiplier or ternary")
        self.selects = pe == "ternary" and not self.is_float and weight_bits <= TERNARY_SELECT_BITS
        if self.is_float:
            self.parts = [FloatMAC(tech_node, max(weight_bits, input_bits), accumulator_bits)]
        elif self.selects:
            self.parts = ternary_select_parts(tech_node, input_bits, accumulator_bits)
        else:
            self.parts = [
                AladdinMultiplier(tech_node, width_a=weight_bits, width_b=input_bits),
                AladdinAdder(tech_node, accumulator_bits),
            ]
        for part in self.parts:
            part.scale_leak_power(0.0)
        super().__init__(subcomponents=self.parts)

    @action
    def compute(self):
        if self.is_float:
            self.parts[0].compute()
        elif self.selects:
            self.parts[0].add()
            self.parts[1].add()
        else:
            self.parts[0].multiply()
            self.parts[1].add()


TERNARY_SELECT_BITS = precision.TERNARY_WEIGHT_BITS  # a ternary weight (-1, 0, +1), packed in 2 bits


def ternary_select_parts(tech_node: float, input_bits: int, accumulator_bits: int) -> list:
    """A ternary-native PE's MAC: the sign select and the accumulating add. hwcomponents has no mux or XOR
    model, so the select (x or its one's complement, input_bits XOR gates, the +1 of -x entering the adder as
    its carry-in; a zero weight gates the add) is charged as an Aladdin adder of input_bits, an upper bound: each
    full-adder bit holds the XOR pair the select needs and more (Weste and Harris, CMOS VLSI Design, 4th ed.,
    ch. 11: a mirror full adder is 28 transistors, an XOR 8 to 12). The add is the Aladdin adder of the
    accumulator's width, as in the multiplier PE; the multiplier is gone."""
    return [AladdinAdder(tech_node, input_bits), AladdinAdder(tech_node, accumulator_bits)]


def accumulator_bits_expression(int_accumulator_bits: int) -> str:
    """An einsum's partial-sum width, as an AccelForge expression over its renames: fp32 for a float MAC (the
    einsum's FLOAT_TENSORS rename holds its tensors), else the integer accumulator's width."""
    return f"{FLOAT_ACCUMULATOR_BITS} if len({FLOAT_TENSORS}) > 0 else {int_accumulator_bits}"


def int_accumulator_bits(layers: list[dict]) -> int:
    """Bits that hold an exact sum of the widest integer layer's products: w + x - 1 bits per signed
    product, plus one bit per doubling of the terms summed."""
    widths = [
        l["weight_bits"] + l["input_bits"] - 1 + math.ceil(math.log2(l["in_features"]))
        for l in layers
        if not float_operands(l)
    ]
    return max(widths, default=FLOAT_ACCUMULATOR_BITS)


# The operands of each format layers.json records, as the MAC takes them: (weight bits, input bits, float).
FORMAT_OPERANDS = {
    "fp32": (32, 32, True),
    "bf16": (16, 16, True),
    "fp16": (16, 16, True),
    "fp8": (8, 8, True),
    "int8": (8, precision.INT8_INPUT_BITS, False),
    "ternary": (precision.TERNARY_WEIGHT_BITS, precision.INT8_INPUT_BITS, False),
}
# The layer width the integer accumulators of mac_energy_pj are sized for: NeRF's hidden layers' 256.
REFERENCE_IN_FEATURES = 256


def mac_energy_pj(tech_node: float, pe: str = "multiplier") -> dict[str, float]:
    """What one MAC action of LayerMAC costs at tech_node for each format, in pJ: float formats accumulating in
    fp32, integer ones in the accumulator int_accumulator_bits gives a REFERENCE_IN_FEATURES-wide layer of the
    format (23 bits for int8 x int8, 17 for ternary x int8). A run's integer layers share the accumulator of its
    widest sum, so a run's own MACs can differ from these by a few adder bits. pe: LayerMAC's (ternary-native PEs
    change the ternary entry only)."""
    energies = {}
    for layer_format, (weight_bits, input_bits, is_float) in FORMAT_OPERANDS.items():
        reference = {
            "name": layer_format,
            "format": layer_format,
            "weight_bits": weight_bits,
            "input_bits": input_bits,
            "in_features": REFERENCE_IN_FEATURES,
        }
        accumulator = FLOAT_ACCUMULATOR_BITS if is_float else int_accumulator_bits([reference])
        mac = LayerMAC(tech_node, weight_bits, input_bits, accumulator, is_float, pe)
        energies[layer_format] = mac.compute().energy * 1e12
    return energies
