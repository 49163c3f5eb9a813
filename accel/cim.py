"""AccelForge's compute-in-memory designs (examples/arches/compute_in_memory, accel.architectures.CIM) as specs:
loaded as the designs' own `_load_spec.get_spec` loads them (Jinja `include_text('_include.yaml')`, their variables,
`_include_functions.py` as expression functions, and a dummy main memory that holds all but the weights), with a
run's field as the workload. The designs take each einsum's bits from its tensors (`_include.yaml`:
`weight_bits: round(weight.bits_per_value)`, `input_bits: round(input.bits_per_value)`), so every layer's
measured widths reach the design's bit-slicing variables (n_weight_slices, n_input_slices, ...) per einsum, as
they reach the digital path's LayerMAC. A macro computes integers only: costed_layers says what a float value
becomes. docs/accelerators.md, "Compute-in-memory".
"""

import functools
import importlib.util
from pathlib import Path

from accel.workloads import float_operands

# A float layer's weights and inputs, and every value wider (layers.json's 32-bit outputs: the float
# accumulations the PyTorch model writes), are costed as int8 on a macro: the integer format of the project's
# precision ladder (post-training int8 of a float model). results.csv's float_macs_as_int8_frac says how much.
FLOAT_AS_INT_BITS = 8


def cim_dir() -> Path:
    import accelforge as af

    return Path(str(af.examples.arches.path)) / "compute_in_memory"


@functools.cache
def loader():
    """The designs' own `_load_spec` module (it is not importable as a package)."""
    spec = importlib.util.spec_from_file_location("accelforge_cim_load_spec", cim_dir() / "_load_spec.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def costed_layers(layers: list[dict]) -> list[dict]:
    """The layers as a macro computes them: integer layers at their measured widths (int8: 8 x 8 bits; ternary:
    2-bit weights, as layers.json packs them, x 8-bit inputs), float layers (fp32, bf16, fp8 ...) at int8 weights
    and inputs, and every output at most FLOAT_AS_INT_BITS wide."""
    costed = []
    for layer in layers:
        layer = dict(layer, output_bits=min(layer["output_bits"], FLOAT_AS_INT_BITS))
        if float_operands(layer):
            layer.update(weight_bits=FLOAT_AS_INT_BITS, input_bits=FLOAT_AS_INT_BITS, format="int8")
        costed.append(layer)
    return costed


def float_macs_frac(layers: list[dict]) -> float:
    """The share of the layers' MACs that computed in a float format (costed as int8 on a macro)."""
    macs = [layer["in_features"] * layer["out_features"] * layer["samples_per_frame"] for layer in layers]
    return sum(m for m, layer in zip(macs, layers) if float_operands(layer)) / sum(macs)


def unscaled_adc_throughput(spec) -> None:
    """isaac_isca_2016.yaml's ADC throughput names a throughput_scale its ADC does not set (AccelForge cannot
    evaluate it); its ADC takes no weight-slice parallelism, so the scale is 1: 1.28 GS/s per 128 columns."""
    spec.arch.nodes["ADC"].extra_attributes_for_component_model["throughput"] = (
        "1 / cycle_period * cols_active_at_once / 100"
    )


def adc_bits_named(spec) -> None:
    """raella_isca_2023.yaml gives its ADC `adc_resolution`; hwcomponents' ADC models take `n_bits`."""
    spec.arch.nodes["ADC"].extra_attributes_for_component_model["n_bits"] = "adc_resolution"


# What a shipped file needs before AccelForge and hwcomponents can cost it (each a one-line repair of the file).
FIXES = {"isaac_isca_2016": (unscaled_adc_throughput,), "raella_isca_2023": (adc_bits_named,)}


def build_spec(design: str, workload: dict):
    """The design's spec (one macro, get_spec's default; weights resident in its arrays, programmed once and not
    charged, as the designs model them) with the workload; the mapper after the lowest energy, as hw_eval's."""
    import accelforge as af

    spec = loader().get_spec(design, add_dummy_main_memory=True)
    spec.workload = af.Workload(**workload)
    for fix in FIXES.get(design, ()):
        fix(spec)
    spec.mapper.metrics = af.mapper.Metrics.ENERGY
    return spec


def evaluated_variables(design: str) -> dict:
    """The design's node, cycle period and slicing as AccelForge evaluates them for its own default workload
    (the catalogue's tech node and clock are these; a test checks them)."""
    spec = loader().get_spec(design)
    for fix in FIXES.get(design, ()):
        fix(spec)
    evaluated = spec._spec_eval_expressions(einsum_name=spec.workload.einsums[0].name)
    return {
        "tech_node": float(evaluated.variables["tech_node"]),
        "cycle_period": float(evaluated.arch.variables["cycle_period"]),
    }
