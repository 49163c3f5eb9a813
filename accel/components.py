"""The MAC of each layer's operand widths (hwcomponents models), and the partial sums' width.

The architectures (accel/architectures.py) keep AccelForge's example memories; only their MAC is replaced by
LayerMAC, which takes the einsum's weight, input and accumulator widths.
"""

import math

import precision
from accel.toolchain import toolchain_missing

try:
    from hwcomponents import ActionCost, ComponentModel, action
    from hwcomponents.scaling import (tech_node_area, tech_node_energy, tech_node_latency, tech_node_leak,
                                      tech_node_throughput)
    from hwcomponents_library import AladdinAdder, AladdinMultiplier
except ImportError as e:
    # hw_eval.py turns this into its one-line error; another importer gets the same advice.
    raise ImportError(toolchain_missing(e)) from e

FLOAT_ACCUMULATOR_BITS = 32  # fp16/bf16 products accumulate in fp32, as tensor cores and TPUs do

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
