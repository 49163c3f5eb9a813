"""Runs' layers as AccelForge workloads: each radiance field (coarse, fine) one workload of one einsum per
Linear layer of layers.json, with the run's bitwidths and whether its MAC multiplies floats or integers (its
measured format), and the densities of each einsum's operands that the sparse designs take (accel/sparsity.py)."""

import precision
from accel import sparsity
from utils import UserError

# layers.json's `format` (measured.py: what the layer's matmul computed in) -> whether its MAC is a float one.
# fp8 and int8 both have 8 bits, so the format, not the width, tells them apart.
FLOAT_FORMATS = ("fp32", "tf32", "fp16", "bf16", "fp8")
INTEGER_FORMATS = ("int8", "int4", "ternary")
# The einsum's rename that carries it to the MAC (accel.specs.build_spec): every tensor of the einsum for
# float operands, none for integer ones. AccelForge evaluates the MAC's attributes per einsum with its renames in
# scope, and the workload, with this in it, keys the mapping cache (accel.mapping.cache_path): fp8 and int8
# layers of equal widths are different tiles.
FLOAT_TENSORS = "float_tensors"


def split_fields(layers: list[dict]) -> dict[str, list[dict]]:
    """Layers grouped by radiance field (the name's first part: coarse, fine), in execution order."""
    fields: dict[str, list[dict]] = {}
    for layer in layers:
        fields.setdefault(layer["name"].split(".")[0], []).append(layer)
    return fields


def float_operands(layer: dict) -> bool:
    """Whether the layer's MAC multiplies floats: its measured format where layers.json has one (an integer weight
    beside float inputs multiplies floats), else (a run from before formats were recorded) its input's width
    (precision.is_float: 16 bits or more)."""
    layer_format = layer.get("format")
    if layer_format is None:
        return precision.is_float(layer["input_bits"])
    if layer_format not in FLOAT_FORMATS + INTEGER_FORMATS:
        raise UserError(
            f"layer {layer['name']} computes in {layer_format!r}, which hw_eval.py has no MAC for "
            f"(known: {', '.join(FLOAT_FORMATS + INTEGER_FORMATS)})"
        )
    # Weight-only quantization (ptq.py's int8-weight, int4-weight): integer weights, float inputs. Its kernels
    # dequantize the weights and multiply floats, so its MAC is the inputs' float MAC; the weights' bits still set
    # what the memories hold and move.
    return layer_format in FLOAT_FORMATS or precision.is_float(layer["input_bits"])


def layer_key(name: str) -> str:
    """A layer's name without the `.linear` of a wrapper (BitNeRF's BitLinear, ptq.py's ZeroPaddedLinear), so a
    variant's layers match the trained model's whichever of the two wraps them."""
    return name.removesuffix(".linear")


def einsum_name(layer: dict) -> str:
    """The layer's name within its field, without a wrapper's `.linear` (coarse.layers.0.linear -> layers_0): the
    same in every field and under every wrapper, so equal fields (coarse and fine; exp4 and ptq.py's ternary
    variant of exp1) give equal workloads and share a cache entry."""
    return layer_key(layer["name"]).split(".", 1)[-1].replace(".", "_")


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
            raise UserError(
                f"layer {layer['name']} reads {layer['in_features']} features, but no earlier "
                f"output is that wide or narrower"
            )
        sources.append((same or narrower)[0] - 1)
    return sources


def field_workload(layers: list[dict], rows: int) -> dict:
    """An AccelForge workload for one field: one einsum per Linear layer, `rows` samples.

    Tensors: X (the encoded point), Y_<layer> (outputs), W_<layer> (weights). An activation is stored
    as wide as its widest reader takes it (BitNeRF quantizes to int8 as it writes the next layer's
    input); a final output as the layer writes it. A concatenating layer reads its source tensor over
    a wider rank than the source writes: the extra columns are the concatenated input. Each einsum's renames
    name its input, weight and output, and (FLOAT_TENSORS) whether its MAC is a float one.
    """
    names = [einsum_name(l) for l in layers]
    sources = layer_inputs(layers)
    tensors = ["X"] + [f"Y_{n}" for n in names]  # tensors[j + 1]: layer j's output
    readers: dict[int, list[dict]] = {}
    for layer, source in zip(layers, sources):
        readers.setdefault(source, []).append(layer)
    bits = {
        tensors[j + 1]: max((r["input_bits"] for r in readers.get(j, [])), default=layers[j]["output_bits"])
        for j in range(len(layers))
    }
    bits["X"] = max(r["input_bits"] for r in readers[-1])
    shape = {"m": f"0 <= m < {rows}"}
    einsums = []
    for layer, name, source in zip(layers, names, sources):
        input_tensor, output_tensor, weight = tensors[source + 1], f"Y_{name}", f"W_{name}"
        shape[f"k_{name}"] = f"0 <= k_{name} < {layer['in_features']}"
        shape[f"n_{name}"] = f"0 <= n_{name} < {layer['out_features']}"
        einsums.append(
            {
                "name": name,
                "tensor_accesses": [
                    {
                        "name": input_tensor,
                        "projection": {"M": "m", f"C_{input_tensor}": f"k_{name}"},
                        "bits_per_value": bits[input_tensor],
                    },
                    {
                        "name": weight,
                        "projection": {f"K_{name}": f"k_{name}", f"N_{name}": f"n_{name}"},
                        "bits_per_value": layer["weight_bits"],
                    },
                    {
                        "name": output_tensor,
                        "projection": {"M": "m", f"C_{output_tensor}": f"n_{name}"},
                        "output": True,
                        "bits_per_value": bits[output_tensor],
                    },
                ],
                "renames": {
                    "input": input_tensor,
                    "weight": weight,
                    "output": output_tensor,
                    FLOAT_TENSORS: "All" if float_operands(layer) else "Nothing",
                },
            }
        )
    return {"iteration_space_shape": shape, "einsums": einsums}


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
            input=1.0 - layer["input_sparsity"],
            weight=layer.get("weight_density", 1.0),
            output=1.0 - readers[0]["input_sparsity"] if readers else 1.0,
        )
    return densities
