"""What each accelerator model charges per MAC (docs/accelerators.md): the digital architectures' MAC by number
format (hw_eval.mac_energy_text, no mapping), and each compute-in-memory design's array per MAC of one 128 x 128
layer with 8-bit and with ternary (2-bit) weights, 8-bit inputs, 256 samples (accel.mapping.map_tile).

    python benchmarks/mac_energies.py            # every architecture, and every compute-in-memory design
    python benchmarks/mac_energies.py --tiny     # one design: what tests/test_benchmarks.py runs
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import hw_eval  # noqa: E402
from accel import architectures, mapping  # noqa: E402
from accel.workloads import field_workload  # noqa: E402

LAYER, SAMPLES = 128, 256
WEIGHT_FORMATS = {"int8": 8, "ternary": 2}


def cim_pj_per_mac(arch_name: str) -> dict[str, float]:
    """The design's array energy per MAC (pJ) of one LAYER x LAYER layer, by weight format."""
    energies = {}
    for layer_format, weight_bits in WEIGHT_FORMATS.items():
        layer = {
            "name": "coarse.layers.1",
            "in_features": LAYER,
            "out_features": LAYER,
            "weight_bits": weight_bits,
            "input_bits": 8,
            "output_bits": 8,
            "format": layer_format,
            "input_sparsity": 0.0,
            "samples_per_frame": SAMPLES,
        }
        result = mapping.map_tile(arch_name, field_workload([layer], SAMPLES), 17)
        energies[layer_format] = result["mac_energy_j"]["layers_1"] / (LAYER * LAYER * SAMPLES) * 1e12
    return energies


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the digital table and one compute-in-memory design")
    args = parser.parse_args(argv)
    print(hw_eval.mac_energy_text([arch.name for arch in architectures.SHIPPED]))
    designs = architectures.CIM[:1] if args.tiny else architectures.CIM
    result = {}
    print(f"\n{'design':<22}{'node':>6}{'int8 pJ/MAC':>14}{'ternary pJ/MAC':>16}{'ratio':>8}")
    for arch in designs:
        result[arch.name] = energies = cim_pj_per_mac(arch.name)
        print(
            f"{arch.name:<22}{arch.tech_node_nm:>6g}{energies['int8']:>14.4f}{energies['ternary']:>16.4f}"
            f"{energies['ternary'] / energies['int8']:>8.2f}",
            flush=True,
        )
    return result


if __name__ == "__main__":
    main()
