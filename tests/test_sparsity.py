"""accel/sparsity.py (the gating and skipping designs on a dense mapping) and the census it reads (evaluation.py).

The model tests use a hand-made tile (one einsum, every kind of level) whose expected numbers are worked
out by hand; no mapper runs here (tests/test_hw_eval.py runs the real one).
"""

import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import write_scene

import bitnerf
import configs
import rundir
from accel import sparsity
from accel.results import DESIGN_TITLES
from accel.sparsity import Densities
from dataset import load_scene
from evaluation import Evaluation
from reporting import hardware

CPU = torch.device("cpu")

BITS = 16
# A PE holds 2 inputs (32 bits of 16-bit values); the MAC clock makes 1000 MACs in 20 s two PEs (lanes).
HW = sparsity.SparseHardware(
    input_port="InSpad",
    weight_port="WSpad",
    output_port="OSpad",
    compressed=("DRAM", "GLB"),
    partial_sum_levels=("OSpad",),
    lane_components=("InSpad", "WSpad", "OSpad", "MAC"),
    window_bits=2 * BITS,
    clock_hz=25.0,
    formats=(sparsity.BITMASK,),
)
DENSE_ENERGY = {"DRAM": 250.0, "GLB": 26.0, "InSpad": 11.0, "WSpad": 11.0, "OSpad": 20.0, "MAC": 55.0}
DENSE_LATENCY = 20.0  # the MAC's: the slowest component


def tile() -> sparsity.Tile:
    """One einsum: X (input) times W (weight) into Y (output), 1000 MACs, 20 output elements."""
    actions = [
        ("fc", "DRAM", "X", "read", 100, 100.0),
        ("fc", "DRAM", "W", "read", 100, 100.0),
        ("fc", "DRAM", "Y", "write", 50, 50.0),
        # 20 final outputs of 16 bits, 16 bits per access: 20 final writes and reads; the other 20 writes are
        # partial sums.
        ("fc", "GLB", "X", "read", 200, 20.0),
        ("fc", "GLB", "Y", "read", 20, 2.0),
        ("fc", "GLB", "Y", "write", 40, 4.0),
        ("fc", "InSpad", "X", "read", 1000, 10.0),
        ("fc", "InSpad", "X", "write", 100, 1.0),
        ("fc", "WSpad", "W", "read", 1000, 10.0),
        ("fc", "WSpad", "W", "write", 100, 1.0),
        ("fc", "OSpad", "Y", "read", 1000, 10.0),
        ("fc", "OSpad", "Y", "write", 1000, 10.0),
        ("fc", "MAC", "None", "compute", 1000, 50.0),
        ("fc", "MAC", None, "leak", 0, 5.0),
    ]
    latency = {
        ("fc", "DRAM"): 10.0,
        ("fc", "GLB"): 5.0,
        ("fc", "InSpad"): 4.0,
        ("fc", "WSpad"): 4.0,
        ("fc", "OSpad"): 8.0,
        ("fc", "MAC"): 20.0,
    }
    return sparsity.Tile(
        actions=actions,
        latency_s=latency,
        roles={"fc": {"input": "X", "weight": "W", "output": "Y"}},
        bits={"X": BITS, "W": BITS, "Y": BITS},
        output_elements={"fc": 20},
        bits_per_action={"GLB": {"read": 16, "write": 16}},
    )


def evaluate(design, densities: Densities, **kwargs) -> sparsity.Result:
    return sparsity.evaluate(design, HW, tile(), {"fc": densities}, **kwargs)


# --- Designs on the tile ---------------------------------------------------------------------------


@pytest.mark.parametrize("design", sparsity.DESIGNS)
def test_with_every_density_one_each_design_is_dense_exactly(design):
    result = evaluate(design, Densities(1.0, 1.0, 1.0))
    assert result.energy_j == DENSE_ENERGY  # exactly: not approximately
    assert result.latency_s == DENSE_LATENCY
    assert result.mac_time_s == result.mac_time_balanced_s == 20.0


def test_gating_one_operand_at_half_density_halves_the_gated_energy_and_keeps_the_cycles():
    for densities in (Densities(input=0.5), Densities(weight=0.5)):
        result = evaluate("gating", densities)
        assert result.energy_j["MAC"] == pytest.approx(25.0 + 5.0)  # half the compute; leakage over the same time
        assert result.energy_j["OSpad"] == pytest.approx(10.0)  # no partial-sum update for a gated MAC
        assert result.latency_s == DENSE_LATENCY and result.mac_time_s == 20.0
        assert (result.energy_j["DRAM"], result.energy_j["GLB"]) == (250.0, 26.0)  # nothing above the PEs
    # A zero input gates the weight read it leads; a zero weight does not spare the input read.
    assert evaluate("gating", Densities(input=0.5)).energy_j["WSpad"] == pytest.approx(5.0 + 1.0)
    assert evaluate("gating", Densities(weight=0.5)).energy_j["WSpad"] == 11.0
    assert evaluate("gating", Densities(weight=0.5)).energy_j["InSpad"] == 11.0


def test_both_operands_sparse_gate_the_product_of_their_densities():
    result = evaluate("gating", Densities(input=0.5, weight=0.4))
    assert result.energy_j["MAC"] == pytest.approx(50.0 * 0.2 + 5.0)
    joint = evaluate("gating", Densities(input=0.5, weight=0.4, joint=0.3))  # a measured joint density, if given
    assert joint.energy_j["MAC"] == pytest.approx(50.0 * 0.3 + 5.0)


def test_skipping_at_density_d_scales_mac_cycles_by_d_when_balanced_and_by_the_imbalance_model_otherwise():
    # Input density 0.5: every per-PE resource does half its dense work on average; the MAC bounds the tile.
    balanced = evaluate("skipping", Densities(input=0.5), balanced=True)
    assert balanced.mac_time_s == pytest.approx(0.5 * 20.0)
    # Two PEs with two input slots each: the slowest PE's effectual slots, E[max of 2 Binomial(2, 0.5)] = 1.375
    # (by hand: P(max = 1) = 0.75^2 - 0.25^2 = 0.5, P(max = 2) = 1 - 0.75^2 = 0.4375), of 2 slots.
    imbalanced = evaluate("skipping", Densities(input=0.5))
    assert imbalanced.mac_time_s == pytest.approx(0.6875 * 20.0)
    assert imbalanced.mac_time_balanced_s == pytest.approx(0.5 * 20.0)
    assert imbalanced.latency_s == pytest.approx(0.6875 * 20.0)
    for d in (0.1, 0.3, 0.9):
        assert evaluate("skipping", Densities(weight=d), balanced=True).mac_time_s == pytest.approx(d * 20.0)


def test_lane_time_fraction_by_hand():
    assert sparsity.lane_time_fraction(0.5, lanes=2, window=2) == pytest.approx(0.6875)
    assert sparsity.lane_time_fraction(0.3, lanes=1, window=12) == 0.3  # one PE: nothing to wait for
    assert sparsity.lane_time_fraction(0.3, lanes=168, window=None) == 0.3  # no synchronization
    assert sparsity.lane_time_fraction(0.5, lanes=3, window=1) == pytest.approx(1 - 0.5**3)  # lock-step
    assert sparsity.lane_time_fraction(1.0, lanes=168, window=12) == 1.0
    # More PEs wait longer for their slowest; wider windows average the imbalance out.
    assert (
        sparsity.lane_time_fraction(0.4, 2, 12)
        < sparsity.lane_time_fraction(0.4, 168, 12)
        < sparsity.lane_time_fraction(0.4, 168, 4)
        < 1
    )
    assert sparsity.expected_max_binomial(3, 0.5, 1) == pytest.approx(1.5)  # one lane: the mean


def test_skipping_compresses_activations_above_the_pes_and_keeps_partial_sums_dense():
    result = evaluate("skipping", Densities(input=0.25, output=0.5))
    x_ratio, y_ratio = 0.25 + 1 / BITS, 0.5 + 1 / BITS  # bitmask: the nonzero values and one bit per element
    assert result.formats == {"X": "bitmask", "Y": "bitmask"}
    assert result.energy_j["DRAM"] == pytest.approx(100.0 * x_ratio + 100.0 + 50.0 * y_ratio)  # weights stay dense
    # GLB: X compressed; Y's 20 final reads and 20 final writes compressed, its 20 partial-sum writes dense.
    assert result.energy_j["GLB"] == pytest.approx(20.0 * x_ratio + 2.0 * y_ratio + 2.0 * y_ratio + 2.0)
    assert result.energy_j["InSpad"] == pytest.approx(11.0 * x_ratio)  # the input port reads the compressed stream
    assert result.energy_j["WSpad"] == pytest.approx(10.0 * 0.25 + 1.0)  # a zero input skips its weight read
    gating = evaluate("gating", Densities(input=0.25, output=0.5))
    assert gating.energy_j["DRAM"] == 250.0 and gating.energy_j["GLB"] == 26.0 and gating.formats == {}


def test_skipping_saves_leakage_with_the_cycles():
    result = evaluate("skipping", Densities(input=0.5), balanced=True)
    assert result.latency_s == pytest.approx(10.0)  # the MAC's half (DRAM's traffic falls to 8.25 s)
    assert result.energy_j["MAC"] == pytest.approx(25.0 + 5.0 * 10.0 / 20.0)


def test_a_dense_first_layer_is_left_uncompressed():
    result = evaluate("skipping", Densities(input=1.0, output=1.0))
    assert result.formats == {"X": "dense", "Y": "dense"}
    assert result.energy_j == DENSE_ENERGY


# --- Formats ---------------------------------------------------------------------------------------


def test_format_bits_by_hand():
    rle5 = sparsity.rle(5)
    assert sparsity.bits_per_element(sparsity.DENSE, 0.3, 16) == 16
    assert sparsity.bits_per_element(sparsity.BITMASK, 0.5, 16) == 9.0  # 8 bits of values, 1 of mask
    # Run-length: 21 bits per nonzero; runs of 32 zeros or more need q^32 / (1 - q^32) padding entries per nonzero.
    assert sparsity.bits_per_element(rle5, 0.5, 16) == pytest.approx(0.5 * 21 * (1 + 0.5**32 / (1 - 0.5**32)))
    assert sparsity.bits_per_element(rle5, 0.02, 16) == pytest.approx(0.02 * 21 / (1 - 0.98**32))
    assert sparsity.bits_per_element(rle5, 0.0, 16) == pytest.approx(21 / 32)  # one padding entry per 32 zeros


@pytest.mark.parametrize("fmt, crossover", [(sparsity.BITMASK, 15 / 16), (sparsity.rle(5), 16 / 21)])
def test_metadata_makes_compression_cost_more_than_dense_near_density_one(fmt, crossover):
    # Bitmask: d * 16 + 1 > 16 above d = 15/16; run-length: d * 21 > 16 above d = 16/21 (padding negligible there).
    assert sparsity.traffic_ratio(fmt, 1.0, 16) > 1
    assert sparsity.traffic_ratio(fmt, crossover + 0.01, 16) > 1 > sparsity.traffic_ratio(fmt, crossover - 0.01, 16)
    assert sparsity.stored_format((fmt,), crossover + 0.01, 16) == (sparsity.DENSE, 1.0)
    assert sparsity.stored_format((fmt,), crossover - 0.01, 16)[0] == fmt


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="density"):
        sparsity.bits_per_element(sparsity.BITMASK, 1.5, 16)
    with pytest.raises(ValueError, match="unknown design"):
        sparsity.evaluate("pruning", HW, tile(), {})


# --- The census: weight and joint densities in layers.json ------------------------------------------

TINY = replace(
    configs.QUICK, depth=2, width=4, pos_freqs=0, use_viewdirs=False, n_coarse=4, n_fine=2, occupancy_grid=False
)  # every sample evaluated: the counts below are by hand


def census_scene(tmp_path):
    """Six 4x4 views; bounds off round numbers, so that no sample has exactly-zero coordinates."""
    return load_scene(
        str(write_scene(tmp_path / "scene.npz", n=6, size=4, near=np.float32(2.05), far=np.float32(6.15)))
    )


def test_census_measures_weight_and_joint_density_by_hand(tmp_path):
    scene = census_scene(tmp_path)
    model = bitnerf.build_model(TINY, scene, CPU)
    with torch.no_grad():
        first = model.coarse.layers[0]  # outputs 1, 1, 0, 0 after ReLU for every sample: its weights ignore the input
        first.weight.zero_()
        first.bias.copy_(torch.tensor([1.0, 1.0, -1.0, -1.0]))
        weight = model.coarse.layers[1].weight  # 4 x 4: input 0 meets one nonzero weight, input 2 none
        weight.fill_(0.5)
        weight[:3, 0] = 0.0
        weight[:, 2] = 0.0
    census = {layer["name"]: layer for layer in Evaluation(scene, TINY, CPU, None).layers(model)["layers"]}
    layer = census["coarse.layers.1"]
    assert layer["input_sparsity"] == 0.5
    assert layer["weight_density"] == 1 - 7 / 16
    # Inputs 0 and 1 nonzero in every sample: input 0 meets 1 nonzero weight, input 1 meets 4: 5 of 16 products
    # (independence would say 0.5 * 9/16).
    assert layer["joint_density"] == round(5 / 16, 4)
    head = census["coarse.output_head"]  # random weights: no exact zeros, so joint = input density
    assert head["weight_density"] == 1.0
    assert head["joint_density"] == pytest.approx(1 - head["input_sparsity"], abs=1e-4)
    assert census["coarse.layers.0"]["joint_density"] == 0.0  # its weights are all zero


def test_census_of_bitnerf_counts_its_ternary_zeros(tmp_path):
    scene = census_scene(tmp_path)
    model = bitnerf.build_model(replace(TINY, model="bitnerf"), scene, CPU)
    census = {layer["name"]: layer for layer in Evaluation(scene, TINY, CPU, None).layers(model)["layers"]}
    for name, linear in bitnerf.quantized_linears(model).items():
        ternary, _ = bitnerf.ternarize(linear.weight)
        assert census[name]["weight_density"] == round((ternary != 0).float().mean().item(), 4)
        assert census[name]["weight_density"] < 1  # BitNet's absmean rounding zeroes some weights
    assert census["coarse.output_head.linear"]["weight_density"] == 1.0  # the fp32 head has no exact zeros


# --- The report's hardware section: the designs side by side -------------------------------------------


def hw_row(run, arch, design, energy, latency, precision, **extra):
    return {
        "run": run,
        "experiment": run,
        "arch": arch,
        "design": design,
        "precision": precision,
        "energy_per_frame_j": str(energy),
        "latency_per_frame_s": str(latency),
        "edp_j_s": str(energy * latency),
        "weight_density": "1",
        "effectual_density": "0.5",
        "joint_density_measured": "",
        "energy_weights_dense_j": str(energy),
        "weight_density_source": "measured",
        **extra,
    }


def designs_rows():
    """exp1 (fp32) and exp4 (BitNeRF) on one architecture: exp4 wins on energy under every design, exp1 on
    latency under skipping; exp4's zero weights are worth 1.5x under gating and 2x under skipping."""
    return [
        hw_row("exp1", "eyeriss", "dense", 10.0, 4.0, "fp32"),
        hw_row("exp1", "eyeriss", "gating", 8.0, 4.0, "fp32"),
        hw_row("exp1", "eyeriss", "skipping", 5.0, 1.0, "fp32"),
        hw_row("exp4", "eyeriss", "dense", 2.0, 2.0, "ternary-int8"),
        hw_row(
            "exp4",
            "eyeriss",
            "gating",
            1.0,
            2.0,
            "ternary-int8",
            energy_weights_dense_j="1.5",
            weight_density="0.7",
            effectual_density="0.35",
            joint_density_measured="0.3",
        ),
        hw_row("exp4", "eyeriss", "skipping", 0.5, 1.5, "ternary-int8", energy_weights_dense_j="1.0"),
    ]


def designs_runs(tmp_path):
    return [
        (tmp_path / "exp1", {"experiment": "exp1", "precision": "fp32", "model": "nerf"}),
        (tmp_path / "exp4", {"experiment": "exp4", "precision": "ternary-int8", "model": "bitnerf"}),
    ]


def table_rows(markdown: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in markdown.splitlines()[2:]]


def test_report_puts_the_designs_side_by_side_against_dense_exp1(tmp_path):
    rows = table_rows(hardware.designs_table(designs_runs(tmp_path), designs_rows(), "eyeriss"))
    # Energy dense, gating, skipping; latency ...; EDP ...: each a multiple of dense exp1's (10 J, 4 s, 40 J·s).
    assert rows[0] == [
        "exp1",
        "fp32",
        "1.000×",
        "0.800×",
        "0.500×",
        "1.000×",
        "1.000×",
        "0.250×",
        "1.000×",
        "0.800×",
        "0.125×",
    ]
    assert rows[1] == [
        "exp4",
        "ternary-int8",
        "0.200×",
        "0.100×",
        "0.050×",
        "0.500×",
        "0.500×",
        "0.375×",
        "0.100×",
        "0.050×",
        "0.019×",
    ]


def test_report_says_which_precision_wins_under_each_design(tmp_path):
    rows = table_rows(hardware.design_winners(designs_runs(tmp_path), designs_rows(), "eyeriss"))
    assert [row[0] for row in rows] == list(DESIGN_TITLES.values())
    assert rows[0][1:] == [
        "ternary-int8 (exp4, 0.200× dense exp1)",
        "ternary-int8 (exp4, 0.500× dense exp1)",
        "ternary-int8 (exp4, 0.100× dense exp1)",
    ]
    assert rows[2][2] == "fp32 (exp1, 0.250× dense exp1)"  # skipping: exp1's 1 s beats exp4's 1.5 s


def test_report_says_how_much_of_bitnerf_s_advantage_its_zero_weights_give(tmp_path):
    rows = table_rows(hardware.zero_weight_share(designs_runs(tmp_path), designs_rows(), "eyeriss"))
    by_design = {row[1]: row for row in rows}
    # Gating: 8 J / 1 J = 8x over exp1; with dense weights 8 / 1.5 = 5.33x; the zeros' 1.5x is log 1.5 / log 8.
    assert by_design["gating"][2:] == [
        "8.00×",
        "5.33×",
        "1.500×",
        f"{100 * math.log(1.5) / math.log(8):.1f}%",
        "0.700",
        "0.350",
        "0.300",
    ]
    assert by_design["skipping + compressed activations"][2:5] == ["10.00×", "5.00×", "2.000×"]
    assert by_design["dense"][4] == "1.000×"  # dense credits no zeros


def test_report_leaves_out_a_results_csv_from_before_the_runs_owned_their_results(tmp_path):
    """An older hw_eval.py wrote results.csv only (no hw_eval.json in the run directories): nothing ties its rows
    to the runs, so the report shows no hardware numbers and says how to cost the runs."""
    runs_dir, hw = tmp_path / "runs", tmp_path / "hw"
    for run_dir, summary in designs_runs(runs_dir):
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({**summary, "run_id": run_dir.name}))
    hw.mkdir()
    with open(hw / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(designs_rows()[0]))
        writer.writeheader()
        writer.writerows(designs_rows())
    rows, stale = hardware.read_results(rundir.find_runs(runs_dir))
    assert rows == [] and stale == []
    lines = hardware.energy_section(rundir.find_runs(runs_dir), runs_dir, rows, stale, hw, tmp_path / "report")
    assert lines[2].startswith("*not evaluated*") and f"`python hw_eval.py --runs {runs_dir}`" in lines[2]
