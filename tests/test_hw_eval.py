import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hw_eval
import report
from accel import architectures, components, mapping, specs, study, toolchain, workloads
from accel.results import (
    CSV_COLUMNS,
    DESIGN_TITLES,
    ENERGY_GROUPS,
    RUN_RESULTS,
    WEIGHTS_ASSUMED_DENSE,
    WEIGHTS_MEASURED,
    read_mac_energy,
    read_ptq_results,
    read_run_results,
    si,
)
from reporting.hardware import HW_COLUMNS
from utils import UserError

FP32, AMP, TERNARY = (32, 32, 32), (16, 16, 16), (2, 8, 8)  # (weight, input, output) bits
EIGHT_BIT = (8, 8, 32)  # int8 and fp8 layers: 8-bit operands, the output written wide
TILE = 256  # samples per mapped tile: small, for a quick mapper
REPO = Path(__file__).resolve().parents[1]


def layer(name: str, in_features: int, out_features: int, bits=FP32, sparsity=0.0, samples=1024) -> dict:
    weight_bits, input_bits, output_bits = bits
    return {
        "name": name,
        "in_features": in_features,
        "out_features": out_features,
        "weight_bits": weight_bits,
        "input_bits": input_bits,
        "output_bits": output_bits,
        "input_sparsity": sparsity,
        "samples_per_frame": samples,
    }


def nerf_field(bits=FP32, head_bits=FP32) -> list[dict]:
    """The full NeRF topology at toy sizes: 3 layers with the encoded point (15) concatenated before the
    third, the density head, and the colour branch with the encoded view direction (9) concatenated."""
    return [
        layer("coarse.layers.0", 15, 16, bits),
        layer("coarse.layers.1", 16, 16, bits),
        layer("coarse.layers.2", 16 + 15, 16, bits),
        layer("coarse.density_head", 16, 1, head_bits),
        layer("coarse.feature", 16, 16, bits),
        layer("coarse.view_layer", 16 + 9, 8, bits),
        layer("coarse.rgb_head", 8, 3, head_bits),
    ]


def test_each_layer_reads_its_source_through_the_skip_and_the_colour_branch():
    # -1 is the encoded point; the skip layer and the view layer read a narrower output, widened.
    assert workloads.layer_inputs(nerf_field()) == [-1, 0, 1, 2, 2, 4, 5]


def test_workload_has_one_einsum_per_layer_with_bits_from_the_run():
    workload = workloads.field_workload(nerf_field(TERNARY, head_bits=FP32), rows=64)
    einsums = {e["name"]: e for e in workload["einsums"]}
    assert list(einsums) == ["layers_0", "layers_1", "layers_2", "density_head", "feature", "view_layer", "rgb_head"]
    bits = {a["name"]: a["bits_per_value"] for e in workload["einsums"] for a in e["tensor_accesses"]}
    assert bits["X"] == 8 and bits["W_layers_0"] == 2 and bits["Y_layers_0"] == 8
    # layers.2's output feeds the fp32 density head and the int8 feature layer: stored for the wider reader.
    assert bits["Y_layers_2"] == 32 and bits["W_density_head"] == 32
    assert bits["Y_rgb_head"] == 32  # a final output, as the layer writes it
    skip_input = einsums["layers_2"]["tensor_accesses"][0]
    assert skip_input["name"] == "Y_layers_1"
    assert workload["iteration_space_shape"]["k_layers_2"] == "0 <= k_layers_2 < 31"  # 16 hidden + 15 encoded
    assert workload["iteration_space_shape"]["m"] == "0 <= m < 64"


def test_a_wrapped_layer_s_field_is_the_same_tile_as_the_unwrapped_one(tmp_path):
    # BitNeRF's BitLinear and ptq.py's padding wrap each Linear as `<name>.linear`: exp4 and ptq.py's ternary
    # variant of exp1 have equal fields, so one mapping serves both.
    plain = nerf_field(TERNARY, head_bits=FP32)
    wrapped = [{**layer, "name": f"{layer['name']}.linear"} for layer in plain]
    assert workloads.field_workload(wrapped, rows=64) == workloads.field_workload(plain, rows=64)
    paths = {mapping.cache_path("eyeriss", workloads.field_workload(f, 64), 32, tmp_path) for f in (plain, wrapped)}
    assert len(paths) == 1


def test_integer_partial_sums_are_as_wide_as_the_widest_sum_needs():
    # The widest integer layer is layers.2: 2-bit x 8-bit products need 9 bits, and summing 31 of them
    # (up to 32 = 2^5) 5 more: 14. The fp32 heads' sums are float, however wide.
    ternary = nerf_field(TERNARY, head_bits=FP32) + [layer("coarse.wide_head", 1024, 1, FP32)]
    assert components.int_accumulator_bits(ternary) == 14
    # int8 x int8 over 64 terms: 15-bit products, 6 more bits for 64 = 2^6 terms.
    assert components.int_accumulator_bits([layer("coarse.layers.0", 64, 16, (8, 8, 8))]) == 21
    assert components.int_accumulator_bits(nerf_field(FP32)) == 32  # no integer layer: fp32 sums


def test_mac_models_cost_less_at_fewer_bits():
    fp32 = components.LayerMAC(45e-9, 32, 32, 32).compute().energy
    fp16 = components.LayerMAC(45e-9, 16, 16, 32).compute().energy
    ternary_int8 = components.LayerMAC(45e-9, *TERNARY[:2], 14).compute().energy
    assert fp32 * 1e12 == pytest.approx(3.7 + 0.9)  # Horowitz, ISSCC 2014, at its own 45 nm (pJ: approx's abs
    # tolerance, 1e-12, would take any two energies in J as equal)
    assert fp32 > fp16 > ternary_int8 > 0


def test_an_fp8_mac_is_a_float_mac_cheaper_than_fp16_and_not_an_int8_one():
    fp16 = components.LayerMAC(45e-9, 16, 16, 32, True).compute().energy
    fp8 = components.LayerMAC(45e-9, 8, 8, 32, True).compute().energy
    int8 = components.LayerMAC(45e-9, 8, 8, 23, False).compute().energy
    # E4M3's multiplier fitted through Horowitz's fp16 and fp32 ones by significand width squared, fp32 adder.
    assert fp8 * 1e12 == pytest.approx(0.5 + 0.9)
    assert fp16 > fp8 > int8 > 0  # FP8 costlier than INT8 (van Baalen et al. 2023), cheaper than fp16
    # The format decides, not the width; a layer without one (an older run) falls back on its input's width.
    assert workloads.float_operands({**layer("coarse.a", 8, 8, EIGHT_BIT), "format": "fp8"})
    assert not workloads.float_operands({**layer("coarse.a", 8, 8, EIGHT_BIT), "format": "int8"})
    assert not workloads.float_operands(layer("coarse.a", 8, 8, EIGHT_BIT))
    assert workloads.float_operands(layer("coarse.a", 8, 8, AMP))
    # An fp8 field and an int8 field of equal widths are different workloads: different tiles in the cache.
    fp8_field, int8_field = ([{**layer("coarse.layers.0", 6, 64, EIGHT_BIT), "format": f}] for f in ("fp8", "int8"))
    workload = {f: workloads.field_workload(field, 64) for f, field in (("fp8", fp8_field), ("int8", int8_field))}
    assert [e["renames"][workloads.FLOAT_TENSORS] for e in workload["fp8"]["einsums"]] == ["All"]
    assert [e["renames"][workloads.FLOAT_TENSORS] for e in workload["int8"]["einsums"]] == ["Nothing"]
    paths = {f: mapping.cache_path("tpu_v4i", w, 18, Path("cache")) for f, w in workload.items()}
    assert paths["fp8"] != paths["int8"]
    # Only the integer layers size the integer accumulator.
    assert components.int_accumulator_bits(fp8_field) == components.FLOAT_ACCUMULATOR_BITS
    assert components.int_accumulator_bits(int8_field) == 8 + 8 - 1 + 3


def test_a_weight_only_layer_is_a_float_mac_and_a_format_without_a_mac_is_one_line():
    # ptq.py's weight-only variants store int8 or int4 weights and multiply fp32 inputs: a float MAC.
    for weight_format, bits in (("int8", 8), ("int4", 4)):
        weight_only = {**layer("coarse.a", 8, 8, (bits, 32, 32)), "format": weight_format}
        assert workloads.float_operands(weight_only)
        mac = components.LayerMAC(45e-9, bits, 32, 32, workloads.float_operands(weight_only))
        assert mac.compute().energy == components.LayerMAC(45e-9, 32, 32, 32, True).compute().energy
    assert not workloads.float_operands({**layer("coarse.a", 8, 8, (4, 8, 32)), "format": "int4"})
    with pytest.raises(UserError, match="'int3', which hw_eval.py has no MAC for"):
        workloads.float_operands({**layer("coarse.a", 8, 8, (3, 8, 32)), "format": "int3"})


def test_each_einsum_s_mac_is_costed_as_its_format():
    # AccelForge evaluates the MAC per einsum: an fp8 einsum gets the float MAC, an int8 one of the same widths
    # (in the same workload) the integer MAC, each with its own accumulator.
    field = [
        {**layer("coarse.layers.0", 6, 16, EIGHT_BIT), "format": "fp8"},
        {**layer("coarse.layers.1", 16, 4, EIGHT_BIT), "format": "int8"},
    ]
    spec = specs.build_spec("tpu_v4i", workloads.field_workload(field, 64), 19)
    charged_pj = {
        name: 1e12 * spec.calculate_component_costs(einsum_name=name).arch.find("MAC").actions["compute"].energy
        for name in ("layers_0", "layers_1")
    }
    assert charged_pj["layers_0"] == pytest.approx(1e12 * components.LayerMAC(7e-9, 8, 8, 32, True).compute().energy)
    assert charged_pj["layers_1"] == pytest.approx(1e12 * components.LayerMAC(7e-9, 8, 8, 19, False).compute().energy)


def test_mac_energy_table_charges_each_format_at_the_architecture_s_node():
    table = {
        arch: components.mac_energy_pj(a.mac_tech_node)
        for arch, a in architectures.ARCHITECTURES.items()
        if a.pe == architectures.MULTIPLIER_PE
    }
    for energies in table.values():
        assert list(energies) == ["fp32", "bf16", "fp16", "fp8", "int8", "ternary"]
        assert energies["fp32"] > energies["fp16"] == energies["bf16"] > energies["fp8"] > energies["int8"]
        assert energies["int8"] > energies["ternary"] > 0
    assert table["eyeriss"]["fp8"] > table["tpu_v4i"]["fp8"]  # 65 nm against 7 nm
    at_45nm = components.mac_energy_pj(45e-9)
    assert at_45nm["fp32"] == pytest.approx(4.6) and at_45nm["fp8"] == pytest.approx(1.4)
    # int8 x int8 into 23 bits and ternary x int8 into 17: exact sums over a 256-wide layer.
    assert at_45nm["int8"] == pytest.approx(components.LayerMAC(45e-9, 8, 8, 23, False).compute().energy * 1e12)
    assert at_45nm["ternary"] == pytest.approx(components.LayerMAC(45e-9, 2, 8, 17, False).compute().energy * 1e12)


def write_run(runs_dir, name: str, experiment: str, precision: str, layers: list[dict], **summary) -> None:
    run_dir = runs_dir / name
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"experiment": experiment, "precision": precision, **summary}))
    (run_dir / "layers.json").write_text(json.dumps({"layers": layers}))


def one_layer_fields(bits, sparsity: float) -> list[dict]:
    """A coarse and a fine field of one layer each: the smallest model the mapper can take quickly."""
    return [
        layer("coarse.layers.0", 6, 64, bits, sparsity, samples=4096),
        layer("fine.layers.0", 6, 64, bits, sparsity, samples=12288),
    ]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The real mapper on three precisions on both architectures; exp3 repeats exp2's workload.

    Returns the runs, the output folder, the dense rows by (run, arch) and every row by (run, arch, design).
    """
    tmp = tmp_path_factory.mktemp("hw_eval")
    runs = tmp / "runs"
    write_run(runs, "exp1", "exp1", "fp32", one_layer_fields(FP32, 0.25))
    write_run(runs, "exp2", "exp2", "bf16-amp", one_layer_fields(AMP, 0.25))
    write_run(runs, "exp3", "exp3", "bf16-amp", one_layer_fields(AMP, 0.5))
    # BitNeRF with measured ternary zeros (70 % of its weights nonzero) and joint density.
    write_run(
        runs,
        "exp4",
        "exp4",
        "ternary-int8",
        [{**l, "weight_density": 0.7, "joint_density": 0.5} for l in one_layer_fields(TERNARY, 0.25)],
        run_id="exp4-run-id",
    )  # the others' summaries are from before run_id was recorded
    # exp1's layers on frames of twice the samples: the same tiles (no more mapping), scaled twice as far.
    write_run(
        runs,
        "exp1_double",
        "exp1_double",
        "fp32",
        [{**l, "samples_per_frame": 2 * l["samples_per_frame"]} for l in one_layer_fields(FP32, 0.25)],
    )
    # exp1's frame as a run with an occupancy grid measures it: half of the frame's samples reached the MLP.
    write_run(
        runs,
        "exp1_grid",
        "exp1_grid",
        "fp32",
        [{**l, "samples_per_frame_all": 2 * l["samples_per_frame"]} for l in one_layer_fields(FP32, 0.25)],
    )
    # exp1's workload with no zeros anywhere, weights measured dense.
    write_run(
        runs, "exp1_dense", "exp1_dense", "fp32", [{**l, "weight_density": 1.0} for l in one_layer_fields(FP32, 0.0)]
    )
    # int8 and fp8 training: the same widths, told apart by the format layers.json measured.
    for name, layer_format in (("exp7", "int8"), ("exp8", "fp8")):
        write_run(
            runs,
            name,
            name,
            layer_format,
            [{**l, "format": layer_format, "weight_density": 1.0} for l in one_layer_fields(EIGHT_BIT, 0.25)],
        )
    rows = hw_eval.evaluate(runs, list(architectures.DEFAULT_ARCHS), tmp / "out", tile=TILE, jobs=2)  # a process pool
    return (
        runs,
        tmp / "out",
        {(r["run"], r["arch"]): r for r in rows if r["design"] == "dense"},
        {(r["run"], r["arch"], r["design"]): r for r in rows},
    )


def test_concatenated_inputs_are_mapped_with_all_their_macs():
    field = [layer("coarse.layers.0", 6, 16), layer("coarse.output_head", 16 + 6, 1)]
    mapped = mapping.map_tile("tpu_v4i", workloads.field_workload(field, TILE), components.FLOAT_ACCUMULATOR_BITS)
    assert mapped["macs"] == TILE * (6 * 16 + 22 * 1)
    assert set(mapped["mac_energy_j"]) == {"layers_0", "output_head"}


def test_mapped_macs_equal_the_layers_multiply_accumulates(evaluated):
    _, _, rows, _ = evaluated
    # 6 x 64 MACs per sample, on 4096 coarse and 12288 fine samples: 384 x 16384.
    for (run, _), row in rows.items():
        assert row["macs_per_frame"] == (2 if run == "exp1_double" else 1) * 6_291_456


@pytest.mark.parametrize("arch", list(architectures.DEFAULT_ARCHS))
def test_energy_falls_as_bitwidths_fall(evaluated, arch):
    _, _, rows, _ = evaluated
    fp32, amp, ternary = (rows[run, arch] for run in ("exp1", "exp2", "exp4"))
    for column in ("energy_per_frame_j", "energy_mac_j", "energy_dram_j"):
        assert fp32[column] > amp[column] > ternary[column] > 0


def test_a_frame_of_twice_the_samples_costs_twice(evaluated):
    _, _, rows, _ = evaluated
    for arch in architectures.DEFAULT_ARCHS:
        frame, double = rows["exp1", arch], rows["exp1_double", arch]
        for column in ("energy_per_frame_j", "energy_dram_j", "energy_mac_j", "latency_per_frame_s", "macs_per_frame"):
            assert double[column] == pytest.approx(2 * frame[column])
        assert double["edp_j_s"] == pytest.approx(4 * frame["edp_j_s"])  # twice the energy for twice the time
        assert double["zero_gating_saving_frac"] == pytest.approx(frame["zero_gating_saving_frac"])


def test_energy_without_the_grid_costs_every_sample_of_the_frame(evaluated):
    _, _, _, rows = evaluated
    for arch in architectures.DEFAULT_ARCHS:
        for design in DESIGN_TITLES:
            plain, grid = rows["exp1", arch, design], rows["exp1_grid", arch, design]
            assert grid["energy_per_frame_j"] == pytest.approx(plain["energy_per_frame_j"])
            assert grid["energy_without_grid_j"] == pytest.approx(2 * grid["energy_per_frame_j"])
            assert plain["energy_without_grid_j"] == pytest.approx(plain["energy_per_frame_j"])  # no grid


def test_zero_gating_saves_the_sparse_share_of_mac_energy(evaluated):
    _, _, rows, _ = evaluated
    for arch in architectures.DEFAULT_ARCHS:
        amp, amp_sparser = rows["exp2", arch], rows["exp3", arch]
        assert amp["zero_gating_saving_frac"] == pytest.approx(0.25 * amp["energy_mac_j"] / amp["energy_per_frame_j"])
        assert amp_sparser["zero_gating_saving_frac"] == pytest.approx(2 * amp["zero_gating_saving_frac"])


def test_identical_workloads_are_mapped_once_and_a_second_run_maps_nothing(evaluated, monkeypatch):
    runs, out, rows, designs = evaluated
    # Per architecture: one workload per precision (coarse and fine, exp2 and exp3 share theirs; fp8 and int8
    # do not).
    assert len(list((out / ".cache").glob("*.json"))) == 5 * len(architectures.DEFAULT_ARCHS)
    assert rows["exp3", "tpu_v4i"]["energy_per_frame_j"] == rows["exp2", "tpu_v4i"]["energy_per_frame_j"]

    def no_mapping(*args):
        raise AssertionError("the mapper ran although every workload is cached")

    monkeypatch.setattr(mapping, "map_tile", no_mapping)
    again = hw_eval.evaluate(runs, list(architectures.DEFAULT_ARCHS), out, tile=TILE)
    assert {(r["run"], r["arch"], r["design"]): r for r in again} == designs


def test_results_csv_and_tables(evaluated):
    _, out, _, designs = evaluated
    with open(out / "results.csv") as f:
        reader = csv.DictReader(f)
        assert set(HW_COLUMNS) <= set(reader.fieldnames)  # what report.py reads
        written = {(r["run"], r["arch"], r["design"]): r for r in reader}
    assert written.keys() == designs.keys()  # a row per run x architecture x design
    assert {design for _, _, design in written} == {"dense", "gating", "skipping"}
    for key, row in designs.items():
        for column in (
            "energy_per_frame_j",
            "latency_per_frame_s",
            "energy_mac_j",
            "zero_gating_saving_frac",
            "input_density",
            "weight_density",
            "effectual_density",
            "mac_time_frac",
            "energy_weights_dense_j",
        ):
            assert float(written[key][column]) == pytest.approx(row[column], rel=1e-5)
    for arch in architectures.DEFAULT_ARCHS:
        text = (out / f"{arch}.md").read_text()
        assert "Per 800×800 frame" in text
        energy = text.split("## Energy per frame (J)")[1].split("##")[0]
        cells = {
            line.split("|")[1].strip(): [c.strip() for c in line.split("|")[4:7]]
            for line in energy.splitlines()
            if line.startswith("| exp")
        }
        ratios = {run: [float(c.split("(")[1].rstrip("×)")) for c in row] for run, row in cells.items()}
        for run, row in cells.items():  # dense, gating, skipping side by side, each against dense exp1
            for design, cell in zip(("dense", "gating", "skipping"), row):
                assert cell.startswith(f"{designs[run, arch, design]['energy_per_frame_j']:.4g} (")
        assert ratios["exp1"][0] == 1.0
        assert ratios["exp1"][2] < ratios["exp1"][1] < 1.0  # each design saves more than the last
        assert ratios["exp3"][0] == ratios["exp2"][0]  # the same workload
        assert ratios["exp3"][1] < ratios["exp2"][1]  # but sparser
        assert 0 < ratios["exp4"][0] < ratios["exp2"][0] < 1  # fewer bits cost less than exp1's fp32
        densities = text.split("## Densities the sparse designs used")[1]
        assert "| exp4 | 0.750 | 0.700 | 0.525 | 0.500 |" in densities
        assert "| exp1 | 0.750 | 1.000 | 0.750 | not measured |" in densities
        assert WEIGHTS_ASSUMED_DENSE in densities and WEIGHTS_MEASURED in densities


def test_each_run_directory_gets_its_own_rows_tied_to_the_run(evaluated):
    runs, out, _, designs = evaluated
    with open(out / "results.csv") as f:
        aggregate = list(csv.DictReader(f))
    for run_dir in sorted(runs.iterdir()):
        owned = json.loads((run_dir / RUN_RESULTS).read_text())
        layers_sha256 = hashlib.sha256((run_dir / "layers.json").read_bytes()).hexdigest()
        # summary.json's run_id where it has one, else layers.json's hash.
        run_id = "exp4-run-id" if run_dir.name == "exp4" else layers_sha256
        assert (owned["run_id"], owned["layers_sha256"]) == (run_id, layers_sha256)
        assert owned["rows"] == [row for key, row in designs.items() if key[0] == run_dir.name]
        assert {(r["run_id"], r["layers_sha256"]) for r in aggregate if r["run"] == run_dir.name} == {
            (run_id, layers_sha256)
        }


def test_the_report_shows_a_run_s_results_until_its_layers_change(evaluated, tmp_path, monkeypatch):
    from test_report import write_run as write_trained_run  # a run directory as training writes it

    runs, out, _, _ = evaluated
    copy, hw = tmp_path / "runs", tmp_path / "hw"
    for name in ("exp1", "exp2"):
        shutil.copy(runs / name / "layers.json", write_trained_run(copy, name) / "layers.json")
    shutil.copytree(out / ".cache", hw / ".cache")
    monkeypatch.setattr(mapping, "map_tile", None)  # every tile is cached: the mapper must not run
    rows = {
        (r["run"], r["arch"]): r
        for r in hw_eval.evaluate(copy, list(architectures.DEFAULT_ARCHS), hw, tile=TILE)
        if r["design"] == "dense"
    }
    readme = report.write_report(copy, hw, tmp_path / "report", "report.py").read_text()
    exp1 = next(line for line in readme.splitlines() if line.startswith("| exp1 |"))
    assert si(rows["exp1", "eyeriss"]["energy_per_frame_j"], "J") in exp1
    assert "[eyeriss](" in readme  # hw_eval.py's tables hold these runs as they are
    # exp1 resumed after hw_eval.py ran: layers.json measured again. Its numbers go; exp2's stay.
    layers = json.loads((copy / "exp1" / "layers.json").read_text())
    layers["layers"][0]["input_sparsity"] = 0.3
    (copy / "exp1" / "layers.json").write_text(json.dumps(layers))
    readme = report.write_report(copy, hw, tmp_path / "report", "report.py").read_text()
    exp1, exp2 = (
        next(line for line in readme.splitlines() if line.startswith(f"| {name} |")) for name in ("exp1", "exp2")
    )
    assert exp1.endswith("| not evaluated | not evaluated | not evaluated | not evaluated |")
    assert si(rows["exp2", "tpu_v4i"]["energy_per_frame_j"], "J") in exp2
    assert "Results left out as stale or another run's (computed for another layers.json or run_id): exp1." in readme
    assert "[eyeriss](" not in readme  # its tables hold exp1 as it was: not linked


# --- The sparse designs on the real mapper ------------------------------------------------------------


def test_with_every_density_one_the_designs_equal_dense_exactly(evaluated):
    _, _, _, designs = evaluated
    for arch in architectures.DEFAULT_ARCHS:
        dense = designs["exp1_dense", arch, "dense"]
        for design in ("gating", "skipping"):
            row = designs["exp1_dense", arch, design]
            for column in (
                "energy_per_frame_j",
                "latency_per_frame_s",
                "edp_j_s",
                *(f"energy_{g}_j" for g in ENERGY_GROUPS),
            ):
                assert row[column] == dense[column], (arch, design, column)  # exactly
        # ... and dense is AccelForge's own mapping: exp1's dense row is exp1_dense's.
        assert designs["exp1", arch, "dense"]["energy_per_frame_j"] == dense["energy_per_frame_j"]


def test_gating_saves_energy_not_cycles_and_skipping_saves_both(evaluated):
    _, _, _, designs = evaluated
    for arch in architectures.DEFAULT_ARCHS:
        dense, gating, skipping = (designs["exp2", arch, d] for d in ("dense", "gating", "skipping"))
        assert gating["latency_per_frame_s"] == dense["latency_per_frame_s"]
        assert gating["energy_dram_j"] == dense["energy_dram_j"]  # gating moves every value still
        assert skipping["energy_per_frame_j"] < gating["energy_per_frame_j"] < dense["energy_per_frame_j"]
        assert skipping["latency_per_frame_s"] <= dense["latency_per_frame_s"]
        assert skipping["mac_time_frac_balanced"] == pytest.approx(0.75)  # input density 0.75, weights dense
        assert 0.75 <= skipping["mac_time_frac"] <= 1.0  # the PE array waits for its slowest PE
    # The TPU model's MAC costs no leakage: gating 25 % of the MACs saves exactly 25 % of MAC energy.
    assert designs["exp2", "tpu_v4i", "gating"]["energy_mac_j"] == pytest.approx(
        0.75 * designs["exp2", "tpu_v4i", "dense"]["energy_mac_j"]
    )
    assert designs["exp2", "tpu_v4i", "skipping"]["mac_time_frac"] == pytest.approx(1.0)  # lock-step systolic array


def test_bitnerf_zero_weights_are_credited_and_measured_separately(evaluated):
    _, _, _, designs = evaluated
    for arch in architectures.DEFAULT_ARCHS:
        row = designs["exp4", arch, "gating"]
        assert row["effectual_density"] == pytest.approx(0.75 * 0.7)  # the product of the densities, as used
        assert row["joint_density_measured"] == pytest.approx(0.5)  # recorded beside it
        assert row["energy_weights_dense_j"] > row["energy_per_frame_j"]  # the zero weights saved energy
        dense = designs["exp4", arch, "dense"]
        assert dense["energy_weights_dense_j"] == dense["energy_per_frame_j"]  # dense has nothing to credit
        assert row["weight_density_source"] == WEIGHTS_MEASURED
        # A run without weight_density in layers.json still evaluates, its weights taken as dense.
        assert designs["exp2", arch, "gating"]["weight_density"] == 1.0
        assert designs["exp2", arch, "gating"]["weight_density_source"] == WEIGHTS_ASSUMED_DENSE
    assert designs["exp4", "tpu_v4i", "gating"]["energy_mac_j"] == pytest.approx(
        0.75 * 0.7 * designs["exp4", "tpu_v4i", "dense"]["energy_mac_j"]
    )


@pytest.mark.parametrize("arch", list(architectures.DEFAULT_ARCHS))
def test_fp8_layers_are_charged_as_fp8_macs_not_int8_ones(evaluated, arch):
    _, _, rows, _ = evaluated
    amp, int8, fp8 = (rows[run, arch] for run in ("exp2", "exp7", "exp8"))
    assert amp["energy_mac_j"] > fp8["energy_mac_j"] > 0
    assert int8["energy_mac_j"] != pytest.approx(fp8["energy_mac_j"], rel=0.05)  # the same widths, another MAC
    assert fp8["energy_dram_j"] == pytest.approx(int8["energy_dram_j"])  # the same bytes move
    # Every MAC of a float layer charges what the architecture's table says. No MAC leaks (FloatMAC has no leakage,
    # so the Aladdin parts' is left out too): an fp8 MAC costs more than an int8 one on every architecture,
    # Eyeriss included, whose int8 MACs used to pay leakage that fp8 ones did not.
    assert fp8["energy_mac_j"] > int8["energy_mac_j"]
    table = components.mac_energy_pj(architectures.ARCHITECTURES[arch].mac_tech_node)  # multiplier PEs
    for run, layer_format in (("exp1", "fp32"), ("exp2", "fp16"), ("exp8", "fp8")):
        assert rows[run, arch]["mac_energy_per_mac_pj"] == pytest.approx(table[layer_format]), run


def test_per_sample_and_per_mac_columns_are_the_frame_s_energy_divided(evaluated):
    _, out, _, designs = evaluated
    for (run, arch, _design), row in designs.items():
        samples = 2 * (4096 + 12288) if run == "exp1_double" else 4096 + 12288  # coarse + fine queries
        assert row["samples_per_frame"] == samples
        assert row["energy_per_sample_uj"] * 1e-6 * samples == pytest.approx(row["energy_per_frame_j"])
        samples_all = 2 * samples if run == "exp1_grid" else samples
        assert row["energy_per_sample_without_grid_uj"] * 1e-6 * samples_all == pytest.approx(
            row["energy_without_grid_j"]
        )
        assert row["energy_per_mac_pj"] * 1e-12 * row["macs_per_frame"] == pytest.approx(row["energy_per_frame_j"])
        assert row["mac_energy_per_mac_pj"] * 1e-12 * row["macs_per_frame"] == pytest.approx(row["energy_mac_j"])
        assert (row["tech_node_nm"], row["clock_mhz"]) == {"eyeriss": (65, 200), "tpu_v4i": (7, 1050)}[arch]
        assert row["variant"] == "" and row.keys() == set(CSV_COLUMNS)
    with open(out / "results.csv") as f:
        written = {(r["run"], r["arch"], r["design"]): r for r in csv.DictReader(f)}
    for key, row in designs.items():
        for column in (
            "samples_per_frame",
            "energy_per_sample_uj",
            "energy_per_sample_without_grid_uj",
            "energy_per_mac_pj",
            "mac_energy_per_mac_pj",
            "tech_node_nm",
            "clock_mhz",
        ):
            assert float(written[key][column]) == pytest.approx(row[column], rel=1e-5), column


def test_each_run_s_hw_eval_json_says_what_each_architecture_charges_per_mac(evaluated):
    runs, _, _, _ = evaluated
    summary = json.loads((runs / "exp8" / "summary.json").read_text())
    table = read_mac_energy(runs / "exp8", summary)
    assert table == {
        arch: pytest.approx(components.mac_energy_pj(architectures.ARCHITECTURES[arch].mac_tech_node))
        for arch in architectures.DEFAULT_ARCHS
    }
    assert json.loads((runs / "exp8" / RUN_RESULTS).read_text())["mac_energy_pj"] == table
    assert read_mac_energy(runs / "exp8", {**summary, "run_id": "another run"}) is None  # not this run's


def test_a_run_without_weight_densities_is_said_to_be_taken_as_dense(evaluated, capsys):
    runs, out, _, _ = evaluated
    hw_eval.main(["--runs", str(runs), "--out", str(out), "--tile", str(TILE), "--jobs", "1"])  # all cached
    printed = capsys.readouterr().out
    assert printed.startswith("note: exp1, exp1_double, exp1_grid, exp2, exp3: layers.json has no weight_density")
    assert "taken as dense" in printed
    assert "| architecture | node | clock | fp32 | bf16 | fp16 | fp8 | int8 | ternary |" in printed  # per MAC
    assert "| eyeriss | 65 nm | 200 MHz | 5.71 |" in printed


def write_ptq(run_dir: Path, variants: dict[str, dict]) -> None:
    """A ptq.json as ptq.py writes it: per variant its measured layers (and a row from before it measured them)."""
    rows = [{"variant": "fp32-old", "weight_bits": 32, "psnr_test": 20.0}]
    rows += [
        {"variant": name, "width": 64, "weight_bits": 8, "psnr_test": 19.0, "layers": layers}
        for name, layers in variants.items()
    ]
    (run_dir / "ptq.json").write_text(json.dumps(rows))


def test_ptq_variants_are_costed_with_their_measured_bits_until_ptq_json_changes(evaluated, tmp_path, monkeypatch):
    runs, out, _, designs = evaluated
    copy, hw = tmp_path / "runs", tmp_path / "hw"
    shutil.copytree(runs / "exp1", copy / "exp1")
    shutil.copytree(out / ".cache", hw / ".cache")
    # exp1's fp32 layers quantized after training: int8 (weights 90 % nonzero) and fp8; the fine layer named as
    # ptq.py's ZeroPaddedLinear wraps it.
    measured = {
        f: {
            "coarse.layers.0": {"weight_bits": 8, "input_bits": 8, "format": f, "weight_density": density},
            "fine.layers.0.linear": {"weight_bits": 8, "input_bits": 8, "format": f, "weight_density": density},
        }
        for f, density in (("int8", 0.9), ("fp8", 1.0))
    }
    write_ptq(copy / "exp1", {"int8-dynamic": measured["int8"], "fp8": measured["fp8"]})
    monkeypatch.setattr(mapping, "map_tile", None)  # exp7's and exp8's workloads: every tile is cached
    every_row = hw_eval.evaluate_with_variants(copy, list(architectures.DEFAULT_ARCHS), hw, tile=TILE)
    trained = [r for r in every_row if r["variant"] == ""]
    variants = {(r["variant"], r["arch"], r["design"]): r for r in every_row if r["variant"]}
    assert trained == [designs["exp1", a, d] for a in architectures.DEFAULT_ARCHS for d in DESIGN_TITLES]
    assert len(variants) == 2 * len(architectures.DEFAULT_ARCHS) * len(DESIGN_TITLES)
    for (variant, arch, design), row in variants.items():
        assert row["run"] == "exp1" and row["precision"] == f"ptq-{variant}"
        like = designs["exp7" if variant == "int8-dynamic" else "exp8", arch, "dense"]  # the same layers, trained
        if design == "dense":
            for column in ("energy_per_frame_j", "energy_mac_j", "latency_per_frame_s", "macs_per_frame"):
                assert row[column] == pytest.approx(like[column]), (variant, arch, column)
        assert row["weight_density"] == pytest.approx(0.9 if variant == "int8-dynamic" else 1.0)
    summary = json.loads((copy / "exp1" / "summary.json").read_text())
    stored = json.loads((copy / "exp1" / RUN_RESULTS).read_text())
    assert stored["rows"] == trained == read_run_results(copy / "exp1", summary)  # the report's rows: as before
    assert stored["ptq_sha256"] == hashlib.sha256((copy / "exp1" / "ptq.json").read_bytes()).hexdigest()
    assert read_ptq_results(copy / "exp1", summary) == [r for r in every_row if r["variant"]]
    with open(hw / "results.csv") as f:
        written = list(csv.DictReader(f))
    assert [r["variant"] for r in written] == [r["variant"] for r in every_row]
    energy = (hw / "tpu_v4i.md").read_text().split("## Energy per frame (J)")[1].split("##")[0]  # trained only
    assert energy.count("| exp1 |") == 1
    assert f"| exp1 | exp1 | fp32 | {designs['exp1', 'tpu_v4i', 'dense']['energy_per_frame_j']:.4g} (" in energy
    # ptq.py reruns: the variants' rows are stale until hw_eval.py runs again; the trained model's stay.
    write_ptq(copy / "exp1", {"fp8": measured["fp8"]})
    assert read_ptq_results(copy / "exp1", summary) is None
    assert read_run_results(copy / "exp1", summary) == trained


def test_partial_sums_are_told_from_final_outputs_by_the_spec_s_access_width():
    field = [layer("coarse.layers.0", 6, 16)]
    workload = workloads.field_workload(field, 64)
    assert mapping.output_elements(workload) == {"layers_0": 64 * 16}
    per_action = mapping.bits_per_action(specs.build_spec("eyeriss", workload, 32))
    assert per_action["GlobalBuffer"] == {"read": 64, "write": 64}  # the example's 64-bit accesses
    assert per_action["InputScratchpad"] == {"read": 1, "write": 1}  # counted in bits


def test_the_study_s_workload_is_its_mlp_with_the_skip_and_the_view_branch():
    layers = study.study_layers()
    assert [(l["in_features"], l["out_features"]) for l in layers] == [
        (63, 256),
        *[(256, 256)] * 4,
        (319, 256),
        (256, 256),
        (256, 256),
        (256, 1),
        (256, 256),
        (283, 128),
        (128, 3),
    ]
    # fc_6 reads fc_5 widened by the encoded point; the density head and fc_10 read fc_8; fc_11 reads fc_10.
    assert workloads.layer_inputs(layers) == [-1, 0, 1, 2, 3, 4, 5, 6, 7, 7, 9, 10]
    densities = workloads.field_densities(layers)
    assert densities["fc_1"].input == densities["fc_11"].input == 1.0  # the encoding, and fc_10 has no ReLU
    assert [densities[f"fc_{i}"].input for i in (2, 3, 4, 5, 6, 7, 8, 9, 10, 12)] == [pytest.approx(0.397)] * 10
    # A layer's stored output is what its reader takes: fc_1's is fc_2's input, fc_5's the skip layer's.
    assert [densities[f"fc_{i}"].output for i in (1, 5, 8, 11)] == [pytest.approx(0.397)] * 4
    assert densities["fc_10"].output == 1.0 and densities["fc_12"].output == 1.0  # fc_11 reads it dense; the RGB
    assert {l["weight_bits"] for l in layers} == {16} and {l["weight_density"] for l in layers} == {1.0}


@pytest.mark.parametrize(
    "problem",
    ["no finished runs", "no layers.json", "a layer without its bits", "a PTQ variant of a layer the run lacks"],
)
def test_bad_runs_are_a_one_line_error_before_mapping(tmp_path, capsys, problem):
    runs = tmp_path / "runs"
    runs.mkdir()
    if problem == "no layers.json":
        write_run(runs, "exp1", "exp1", "fp32", one_layer_fields(FP32, 0.0))
        (runs / "exp1" / "layers.json").unlink()
    elif problem == "a layer without its bits":
        bad = one_layer_fields(FP32, 0.0)
        del bad[1]["input_bits"]
        write_run(runs, "exp1", "exp1", "fp32", bad)
    elif problem == "a PTQ variant of a layer the run lacks":
        write_run(runs, "exp1", "exp1", "fp32", one_layer_fields(FP32, 0.0))
        write_ptq(
            runs / "exp1",
            {"int8": {"coarse.layers.9": {"weight_bits": 8, "input_bits": 8, "format": "int8", "weight_density": 1.0}}},
        )
    with pytest.raises(SystemExit) as exit_info:
        hw_eval.main(["--runs", str(runs), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    expected = {
        "no finished runs": f"error: no finished runs in {runs}",
        "no layers.json": f"error: {runs / 'exp1'} has a summary.json but no layers.json",
        "a layer without its bits": f"error: {runs / 'exp1' / 'layers.json'}: every layer needs",
        "a PTQ variant of a layer the run lacks": f"error: {runs / 'exp1' / 'ptq.json'}: variant int8 has "
        f"layers that layers.json lacks: coarse.layers.9",
    }[problem]
    assert err.startswith(expected) and err.count("\n") == 1
    if problem == "a layer without its bits":
        assert err.rstrip().endswith("missing: input_bits")
    assert not (tmp_path / "out").exists()


def test_missing_dot_is_a_one_line_error_before_mapping(tmp_path, monkeypatch, capsys):
    write_run(tmp_path / "runs", "exp1", "exp1", "fp32", one_layer_fields(FP32, 0.0))
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "dot" else real_which(name))
    with pytest.raises(SystemExit) as exit_info:
        hw_eval.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the AccelForge mapper needs graphviz's `dot`") and err.count("\n") == 1


def test_setup_leaves_a_working_cacti_alone(capsys):
    binary = toolchain.cacti_dir() / "cacti"
    assert toolchain.cacti_runs()  # make setup (hw_eval.py --setup) has run
    before = binary.stat().st_mtime_ns
    toolchain.setup()
    assert binary.stat().st_mtime_ns == before
    assert "CACTI runs" in capsys.readouterr().out


def run_without_hwcomponents(code: str, python_version: tuple[int, int] | None = None):
    """Run code in a fresh Python where importing hwcomponents fails (as where it is not installed), optionally
    reporting python_version as sys.version_info."""
    prelude = "import sys; sys.modules['hwcomponents'] = None\n"
    if python_version:
        prelude += f"sys.version_info = {python_version + (0,)}\n"
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=REPO, capture_output=True, text=True)


@pytest.mark.parametrize(
    "python_version, expected",
    [
        ((3, 11), "error: hw_eval.py needs Python >= 3.12 (AccelForge's hwcomponents require it; this is Python 3.11)"),
        (None, "error: hw_eval.py needs AccelForge and hwcomponents ("),
    ],
)
def test_without_its_toolchain_the_command_says_what_it_needs_in_one_line(python_version, expected):
    command = "import runpy; sys.argv = ['hw_eval.py', '--runs', 'nowhere']; "
    command += "runpy.run_path('hw_eval.py', run_name='__main__')"
    result = run_without_hwcomponents(command, python_version)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1
    assert f"pip install {toolchain.ACCELFORGE_REQUIREMENT}" in result.stderr


def test_without_its_toolchain_an_importer_gets_an_import_error_that_says_what_it_needs():
    result = run_without_hwcomponents("import hw_eval")
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ImportError: hw_eval.py needs AccelForge and hwcomponents")


def test_the_mapper_s_sympy_has_a_cache_of_a_mapping_s_size_and_gmpy2_integers():
    # Both only make mapping faster (docs/hw_eval.md, "What is mapped"); the cache size must be set before sympy is
    # imported, which accel.mapping does for its own process and the mapping processes it starts.
    code = (
        "import os, accel.mapping, sympy.core.cache as cache; from sympy.external.gmpy import GROUND_TYPES;"
        " print(os.environ['SYMPY_CACHE_SIZE'], cache.SYMPY_CACHE_SIZE, GROUND_TYPES)"
    )
    env = {k: v for k, v in os.environ.items() if k != "SYMPY_CACHE_SIZE"}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.stdout.split() == ["100000", "100000", "gmpy"], result.stderr


def test_requirements_install_accelforge_where_hwcomponents_installs():
    lines = (REPO / "requirements.txt").read_text().splitlines()
    assert f'{toolchain.ACCELFORGE_REQUIREMENT}; python_version >= "3.12"' in lines


# --- Every architecture, your own file, ternary-native PEs ------------------------------------------------------

OTHER_ARCHS = ("simba", "nvdla", "snowcat", "simple", "tpu_v4i", "tpu_v4i_ternary")


@pytest.fixture(scope="module")
def every_arch(tmp_path_factory):
    """exp1 (fp32) and exp4 (ternary-int8, the fp32 heads of BitNeRF left out) on the digital architectures
    beyond the default set, a ternary-native variant, and a copy of eyeriss.yaml passed as a file beside eyeriss."""
    import accelforge as af

    tmp = tmp_path_factory.mktemp("every_arch")
    runs = tmp / "runs"
    write_run(runs, "exp1", "exp1", "fp32", one_layer_fields(FP32, 0.25))
    write_run(
        runs,
        "exp4",
        "exp4",
        "ternary-int8",
        [{**l, "format": "ternary", "weight_density": 0.7} for l in one_layer_fields(TERNARY, 0.25)],
    )
    copy = tmp / "my_eyeriss.yaml"
    shutil.copy(Path(af.examples.arches.eyeriss), copy)
    keys = architectures.selected([*OTHER_ARCHS, "eyeriss", str(copy)])
    rows = hw_eval.evaluate(runs, keys, tmp / "out", tile=TILE, jobs=2)
    return tmp, {(r["run"], r["arch"], r["design"]): r for r in rows}


def test_every_shipped_architecture_costs_exp1_and_exp4_with_its_node_and_clock(every_arch):
    tmp, rows = every_arch
    nodes = {"simba": 16, "nvdla": 7, "snowcat": 7, "simple": 7, "tpu_v4i": 7, "my_eyeriss": 65}
    for arch, node in nodes.items():
        exp1, exp4 = rows["exp1", arch, "dense"], rows["exp4", arch, "dense"]
        assert exp1["tech_node_nm"] == node and exp1["clock_mhz"] > 0
        assert 0 < exp4["energy_per_frame_j"] < exp1["energy_per_frame_j"], arch  # BitNeRF costs less than NeRF
        assert 0 < exp4["energy_mac_j"] < exp1["energy_mac_j"], arch
        table = (tmp / "out" / f"{arch}.md").read_text()
        assert f"Technology node {node:g} nm" in table and "clock" in table
    # Zero handling only where it is documented: the others are dense only, and their tables say so.
    for arch in ("simba", "nvdla", "snowcat", "simple", "my_eyeriss"):
        assert {d for r, a, d in rows if a == arch} == {"dense"}
        assert "Dense only" in (tmp / "out" / f"{arch}.md").read_text()
    assert {d for r, a, d in rows if a == "tpu_v4i"} == set(DESIGN_TITLES)
    assert rows["exp1", "simba", "dense"]["clock_mhz"] == pytest.approx(4.01e12 / 2048 / 1e6)


def test_an_architecture_file_costs_as_the_architecture_by_name_and_takes_the_file_s_name(every_arch):
    _, rows = every_arch
    for run in ("exp1", "exp4"):
        by_file, by_name = rows[run, "my_eyeriss", "dense"], rows[run, "eyeriss", "dense"]
        assert by_file["energy_per_frame_j"] == pytest.approx(by_name["energy_per_frame_j"], rel=0.01)
        assert by_file["tech_node_nm"] == by_name["tech_node_nm"] and by_file["clock_mhz"] == by_name["clock_mhz"]


@pytest.mark.parametrize(
    "problem, message",
    [
        ("no compute", "no compute component"),
        ("no node", "no technology node"),
        ("not yaml", "not an AccelForge"),
        ("missing", "no such architecture file"),
        ("unknown name", "unknown architecture"),
    ],
)
def test_a_bad_architecture_is_one_line_and_exit_2(tmp_path, capsys, problem, message):
    import accelforge as af

    text = Path(af.examples.arches.eyeriss).read_text()
    path = tmp_path / "arch.yaml"
    if problem == "no compute":
        path.write_text(text[: text.index("  - !Compute")])
    elif problem == "no node":
        path.write_text(Path(af.examples.arches.tpu_v4i).read_text())
    elif problem == "not yaml":
        path.write_text("arch: [1, 2\n")
    runs = tmp_path / "runs"
    write_run(runs, "exp1", "exp1", "fp32", one_layer_fields(FP32, 0.25))
    arch = "eyeriss_v9" if problem == "unknown name" else str(path)
    with pytest.raises(SystemExit) as exit_info:
        hw_eval.main(["--runs", str(runs), "--out", str(tmp_path / "out"), "--arch", arch, "--tile", str(TILE)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, err


def test_all_selects_every_built_in_architecture_and_the_default_is_the_suite_s():
    assert architectures.selected(["all"]) == list(architectures.ARCHITECTURES)
    assert {"eyeriss", "tpu_v4i", "simba", "nvdla", "snowcat", "simple", "eyeriss_ternary"} <= set(
        architectures.ARCHITECTURES
    )
    assert architectures.DEFAULT_ARCHS == ("eyeriss", "tpu_v4i")


def test_a_ternary_native_pe_selects_and_adds_where_the_multiplier_pe_multiplies():
    multiplier = components.LayerMAC(45e-9, 2, 8, 17, False).compute().energy
    select_add = components.LayerMAC(45e-9, 2, 8, 17, False, "ternary").compute().energy
    assert 0 < select_add < multiplier
    # Only ternary layers: int8 and float MACs are the multiplier PE's.
    for operands in ((8, 8, 23, False), (32, 32, 32, True), (8, 8, 32, True)):
        assert components.LayerMAC(45e-9, *operands, "ternary").compute().energy == pytest.approx(
            components.LayerMAC(45e-9, *operands).compute().energy
        )
    # The spec's MAC takes the variant's PE: a ternary einsum is charged less, an fp32 one the same.
    field = [{**layer("coarse.layers.0", 6, 16, TERNARY), "format": "ternary"}, layer("coarse.layers.1", 16, 4)]
    workload = workloads.field_workload(field, 64)
    charged = {
        arch: {
            name: specs.build_spec(arch, workload, 14)
            .calculate_component_costs(einsum_name=name)
            .arch.find("MAC")
            .actions["compute"]
            .energy
            for name in ("layers_0", "layers_1")
        }
        for arch in ("tpu_v4i", "tpu_v4i_ternary")
    }
    assert charged["tpu_v4i_ternary"]["layers_0"] < charged["tpu_v4i"]["layers_0"]
    assert charged["tpu_v4i_ternary"]["layers_1"] == pytest.approx(charged["tpu_v4i"]["layers_1"])


def test_on_a_ternary_native_variant_exp4_s_macs_cost_less_and_exp1_s_the_same(every_arch):
    _, rows = every_arch
    for design in DESIGN_TITLES:
        plain, ternary = rows["exp4", "tpu_v4i", design], rows["exp4", "tpu_v4i_ternary", design]
        assert ternary["mac_energy_per_mac_pj"] < plain["mac_energy_per_mac_pj"]
        assert ternary["energy_dram_j"] == pytest.approx(plain["energy_dram_j"])  # the same 2-bit weights move
        assert rows["exp1", "tpu_v4i_ternary", design]["energy_per_frame_j"] == pytest.approx(
            rows["exp1", "tpu_v4i", design]["energy_per_frame_j"]
        )
    table = components.mac_energy_pj(7e-9, "ternary")
    assert table["ternary"] < components.mac_energy_pj(7e-9)["ternary"] and table["int8"] == pytest.approx(
        components.mac_energy_pj(7e-9)["int8"]
    )


def test_no_integer_mac_leaks_as_no_float_one_does():
    for mac in (
        components.LayerMAC(65e-9, 8, 8, 23, False),
        components.LayerMAC(65e-9, 2, 8, 17, False, "ternary"),
        components.LayerMAC(65e-9, 8, 8, 32, True),
    ):
        assert mac.leak_power == 0


# --- Compute-in-memory ------------------------------------------------------------------------------------------


def three_layer_fields(bits=FP32, first_bits=None, head_bits=FP32, formats=("fp32", "fp32", "fp32")) -> list[dict]:
    """A coarse and a fine field of three layers each (first, hidden, head), each layer with its format."""
    fields = []
    for field, samples in (("coarse", 1024), ("fine", 2048)):
        layers = [
            layer(f"{field}.layers.0", 6, 64, first_bits or bits, 0.25, samples),
            layer(f"{field}.layers.1", 64, 64, bits, 0.25, samples),
            layer(f"{field}.output_head", 64, 4, head_bits, 0.25, samples),
        ]
        fields += [{**l, "format": f} for l, f in zip(layers, formats)]
    return fields


CIM_TEST_ARCH = "isaac_isca_2016"  # 2-bit RRAM cells: an 8-bit weight takes four slices, a ternary one one


@pytest.fixture(scope="module")
def on_cim(tmp_path_factory):
    """exp1 (fp32) and exp4 (BitNeRF: an int8 first layer, a ternary hidden layer, an fp32 head) on a
    compute-in-memory design."""
    tmp = tmp_path_factory.mktemp("cim")
    runs = tmp / "runs"
    write_run(runs, "exp1", "exp1", "fp32", three_layer_fields())
    write_run(
        runs, "exp4", "exp4", "ternary-int8", three_layer_fields(TERNARY, EIGHT_BIT, FP32, ("int8", "ternary", "fp32"))
    )
    rows = hw_eval.evaluate(runs, [CIM_TEST_ARCH], tmp / "out", tile=TILE, jobs=1)
    return tmp, {(r["run"], r["arch"], r["design"]): r for r in rows}


def test_a_macro_computes_integers_at_each_layer_s_measured_widths():
    from accel import cim

    bitnerf = three_layer_fields(TERNARY, EIGHT_BIT, FP32, ("int8", "ternary", "fp32"))[:3]
    costed = cim.costed_layers(bitnerf)
    assert [(l["weight_bits"], l["input_bits"], l["output_bits"]) for l in costed] == [(8, 8, 8), (2, 8, 8), (8, 8, 8)]
    assert cim.float_macs_frac(bitnerf) == pytest.approx(64 * 4 / (6 * 64 + 64 * 64 + 64 * 4))
    assert cim.float_macs_frac(three_layer_fields()) == 1.0


def test_a_compute_in_memory_design_costs_exp1_and_exp4_and_bitnerf_less(on_cim):
    tmp, rows = on_cim
    exp1, exp4 = rows["exp1", CIM_TEST_ARCH, "dense"], rows["exp4", CIM_TEST_ARCH, "dense"]
    assert {d for _, a, d in rows if a == CIM_TEST_ARCH} == {"dense"}  # no documented zero handling
    assert exp1["tech_node_nm"] == 32 and exp1["clock_mhz"] == pytest.approx(1000)
    assert exp1["macs_per_frame"] == exp4["macs_per_frame"] > 0
    # The array (cells, drivers, ADCs, shift-add) is the MAC energy; the dummy main memory costs nothing.
    assert exp1["energy_mac_j"] > 0.9 * exp1["energy_per_frame_j"] and exp1["energy_dram_j"] == 0
    assert 0 < exp4["energy_per_frame_j"] < exp1["energy_per_frame_j"]  # BitNeRF costs less than NeRF
    assert exp1["float_macs_as_int8_frac"] == 1.0 and 0 < exp4["float_macs_as_int8_frac"] < 0.1
    assert "Technology node 32 nm" in (tmp / "out" / f"{CIM_TEST_ARCH}.md").read_text()


def test_each_einsum_s_bits_reach_the_macro_s_slicing(on_cim):
    """Per einsum: exp4's ternary hidden layer's array costs less per MAC than its int8 first layer's and than
    exp1's hidden layer (fp32, costed as int8); its int8 first layer costs what exp1's first layer does. Fails
    when the measured bits are ignored (every layer costed at 8 bits)."""
    tmp, _ = on_cim
    per_mac = {}
    for path in (tmp / "out" / ".cache").glob("*.json"):
        result = json.loads(path.read_text())
        if any(bits == 2 for bits in result["bits"].values()) or result["bits"].get("W_layers_0") == 8:
            run = "exp4" if any(bits == 2 for bits in result["bits"].values()) else "exp1"
            macs = {"layers_0": 6 * 64, "layers_1": 64 * 64, "output_head": 64 * 4}
            per_mac[run] = {e: j / (macs[e] * TILE) for e, j in result["mac_energy_j"].items()}
    assert per_mac["exp4"]["layers_1"] < 0.5 * per_mac["exp4"]["layers_0"]
    assert per_mac["exp4"]["layers_1"] < 0.5 * per_mac["exp1"]["layers_1"]
    assert per_mac["exp4"]["layers_0"] == pytest.approx(per_mac["exp1"]["layers_0"], rel=0.05)


def test_cim_selects_the_compute_in_memory_designs_and_all_includes_them():
    names = [arch.name for arch in architectures.CIM]
    assert architectures.selected(["cim"]) == names and set(names) <= set(architectures.selected(["all"]))
    assert all(architectures.ARCHITECTURES[name].designs == ("dense",) for name in names)


def test_each_compute_in_memory_design_s_node_and_clock_are_its_file_s():
    from accel import cim

    for arch in architectures.CIM:
        found = cim.evaluated_variables(arch.yaml)
        assert arch.mac_tech_node == pytest.approx(found["tech_node"]), arch.name
        assert arch.clock_hz == pytest.approx(1 / found["cycle_period"]), arch.name
