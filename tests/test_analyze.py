"""analyze.py's four analyses, and what evaluation.py measures for them: layers.json's per-layer census
and summary.json's test metrics. Expected values are counted by hand on hand-set weights and fields."""

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_scene

import analyze
import bitnerf
import configs
import nerf
from dataset import load_scene
from evaluation import Evaluation

CPU = torch.device("cpu")


def trained(runs_dir: Path, name: str) -> analyze.TrainedRun:
    return analyze.TrainedRun(runs_dir / name, None, CPU, n_views=1)


def write_layers(run_dir: Path, sparsities: dict[str, float]) -> None:
    layers = [
        {
            "name": name,
            "in_features": 4,
            "out_features": 4,
            "weight_bits": 32,
            "input_bits": 32,
            "output_bits": 32,
            "input_sparsity": s,
            "samples_per_frame": 1000,
        }
        for name, s in sparsities.items()
    ]
    run_dir.mkdir(parents=True)
    (run_dir / "layers.json").write_text(json.dumps({"samples_per_frame": 1000, "layers": layers}))


def test_activation_sparsity_reports_layers_json_per_layer_in_order(tmp_path):
    # Values no model would measure, in an order no model has: they must come from the file as they are.
    write_layers(tmp_path / "run", {"fine.b": 0.125, "coarse.a": 0.75, "coarse.c": 0.0})
    result = analyze.activation_sparsity(analyze.TrainedRun(tmp_path / "run", None, CPU, 1))
    assert result == [
        {"name": "fine.b", "input_sparsity": 0.125},
        {"name": "coarse.a", "input_sparsity": 0.75},
        {"name": "coarse.c", "input_sparsity": 0.0},
    ]


def test_weight_sparsity_counts_near_zero_weights_and_ternary_zeros(trained_runs):
    run = trained(trained_runs, "nerf")
    with torch.no_grad():
        layer0, layer1 = run.model.coarse.layers[0], run.model.coarse.layers[1]
        # Half the weights are at most 1e-3 of the largest: 0 and 1e-4 against 1.
        layer0.weight.copy_(
            torch.tensor([0.0, 1e-4, 0.5, 1.0]).repeat(layer0.weight.numel() // 4).view_as(layer0.weight)
        )
        layer1.weight.zero_()
    result = {layer["name"]: layer for layer in analyze.weight_sparsity(run)}
    # Every Linear of the quick topology (depth 2, no view directions), in execution order.
    assert list(result) == [
        f"{field}.{layer}" for field in ("coarse", "fine") for layer in ("layers.0", "layers.1", "output_head")
    ]
    assert result["coarse.layers.0"]["near_zero"] == 0.5
    assert result["coarse.layers.1"]["near_zero"] == 1.0
    assert all(0.0 <= layer["near_zero"] < 0.5 for name, layer in result.items() if name.startswith("fine"))
    assert not any("ternary_zero" in layer for layer in result.values())

    bit_run = trained(trained_runs, "bitnerf")
    latent = bit_run.model.coarse.layers[0].linear.weight._data
    # absmean 0.5: w / absmean rounds 0 to 0 and +-1 to +-2, clipped to +-1, so half the ternary weights are zero.
    with torch.no_grad():
        latent.copy_(torch.tensor([0.0, 0.0, 1.0, -1.0]).repeat(latent.numel() // 4).view_as(latent))
    bit_result = {layer["name"]: layer for layer in analyze.weight_sparsity(bit_run)}
    assert bit_result["coarse.layers.0.linear"]["ternary_zero"] == 0.5
    assert bit_result["coarse.layers.0.linear"]["near_zero"] == 0.5
    assert "ternary_zero" not in bit_result["coarse.output_head.linear"]  # the heads stay in high precision
    # A trained layer: w rounds to 0 exactly where |w| < absmean / 2 (round to nearest, then clip to +-1).
    trained_latent = bit_run.model.fine.layers[1].linear.weight._data.abs()
    expected = (trained_latent < trained_latent.mean() / 2).float().mean().item()
    assert bit_result["fine.layers.1.linear"]["ternary_zero"] == pytest.approx(expected, abs=1e-4)
    assert 0.0 < expected < 1.0


def set_constant_density(model: nerf.NeRF, raw_density: float) -> None:
    """Make both fields output raw density `raw_density` everywhere (the quick preset's output head: rgb, density)."""
    with torch.no_grad():
        for field in (model.coarse, model.fine):
            field.output_head.weight.zero_()
            field.output_head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, raw_density]))


class WallBehindEmptySpace(torch.nn.Module):
    """Empty space up to camera depth `depth` from camera c2w, then an opaque wall: density 1e4 beyond it."""

    def __init__(self, c2w: np.ndarray, depth: float):
        super().__init__()
        self.centre, self.forward_axis = torch.from_numpy(c2w[:3, 3]), -torch.from_numpy(c2w[:3, 2])
        self.depth = depth

    def forward(self, points, viewdirs):
        # get_rays' directions have camera-space z = -1, so (p - centre) . forward is the ray's t.
        camera_depth = (points - self.centre) @ self.forward_axis
        return torch.zeros(points.shape), 1e4 * (camera_depth >= self.depth).float()


def test_render_weight_sparsity_of_empty_opaque_and_walled_scenes(trained_runs):
    result = analyze.render_weight_sparsity(trained(trained_runs, "nerf"))
    assert result["views"] == [5]
    assert {name: p["samples_per_ray"] for name, p in result["passes"].items()} == {"coarse": 8, "fine": 16}
    for p in result["passes"].values():
        assert 0.0 <= p["empty_space"] <= p["skippable"] <= 1.0 and 0.0 <= p["behind_surface"] <= 1.0

    empty = trained(trained_runs, "nerf")
    set_constant_density(empty.model, -1e3)  # softplus(-1001): no density anywhere, every weight 0
    for p in analyze.render_weight_sparsity(empty)["passes"].values():
        assert (p["skippable"], p["empty_space"], p["behind_surface"]) == (1.0, 1.0, 0.0)

    opaque = trained(trained_runs, "nerf")
    set_constant_density(opaque.model, 1e6)  # the first sample of every ray takes all the weight
    passes = analyze.render_weight_sparsity(opaque)["passes"]
    for name, n_samples in (("coarse", 8), ("fine", 16)):
        assert passes[name]["behind_surface"] == pytest.approx((n_samples - 1) / n_samples, abs=1e-4)
        assert passes[name]["skippable"] == pytest.approx((n_samples - 1) / n_samples, abs=1e-4)
        assert passes[name]["empty_space"] == 0.0

    walled = trained(trained_runs, "nerf")
    wall = WallBehindEmptySpace(walled.scene.poses[5], depth=4.0)
    walled.model.coarse, walled.model.fine = wall, WallBehindEmptySpace(walled.scene.poses[5], depth=4.0)
    passes = analyze.render_weight_sparsity(walled)["passes"]
    # Coarse: 8 bin middles 2.25, 2.75, ..., 5.75 in [2, 6]. Four lie in front of the wall (empty), 4.25
    # takes all the weight, and the three behind it are occluded.
    assert passes["coarse"] == {"samples_per_ray": 8, "skippable": 7 / 8, "empty_space": 4 / 8, "behind_surface": 3 / 8}
    # Fine: the 8 coarse samples and 8 importance samples, which the coarse weight puts in its bin
    # [4.0, 4.5] between coarse midpoints, except the ends of the CDF (u = 0 at 2.5, u = 1 at 5.5).
    # In front: 4 + 1; the first sample past 4.0 takes the weight; behind it: 10.
    assert passes["fine"] == {
        "samples_per_ray": 16,
        "skippable": 15 / 16,
        "empty_space": 5 / 16,
        "behind_surface": 10 / 16,
    }


# Known delays per call, far above the milliseconds each stage of a 16x16 view takes, and unequal, so
# that a stage's time reported under another stage's name shows.
SLOW_COMPOSITE_S, SLOW_ENCODING_S = 0.5, 1.0


def test_time_breakdown_puts_each_stage_s_time_in_its_own_column_and_restores_nerf(trained_runs, monkeypatch):
    originals = (
        nerf.composite,
        nerf.sample_stratified,
        nerf.sample_pdf,
        nerf.PositionalEncoding.forward,
        nerf.RadianceField.forward,
    )
    for name in ("nerf", "bitnerf"):
        result = analyze.time_breakdown(trained(trained_runs, name))
        stages = result["stages_s"]
        assert tuple(stages) == analyze.TIME_STAGES and result["pixels"] == 16 * 16 and result["device"] == "cpu"
        assert all(stages[s] > 0 for s in ("ray generation", "sampling", "encoding", "MLP", "compositing"))
        assert stages["other"] >= -1e-4  # no stage counted twice
    assert originals == (
        nerf.composite,
        nerf.sample_stratified,
        nerf.sample_pdf,
        nerf.PositionalEncoding.forward,
        nerf.RadianceField.forward,
    )

    # Slow two stages down by known times per call. A 16x16 view is one chunk: one composite and one
    # positional encoding per pass, two passes. The encoding runs inside the field, so it must not count
    # as MLP time.
    def slowly(function, seconds):
        def slow(*args, **kwargs):
            time.sleep(seconds)
            return function(*args, **kwargs)

        return slow

    monkeypatch.setattr(nerf, "composite", slowly(nerf.composite, SLOW_COMPOSITE_S))
    monkeypatch.setattr(nerf.PositionalEncoding, "forward", slowly(nerf.PositionalEncoding.forward, SLOW_ENCODING_S))
    result = analyze.time_breakdown(trained(trained_runs, "nerf"))
    stages = result["stages_s"]
    composite_s, encoding_s = 2 * SLOW_COMPOSITE_S, 2 * SLOW_ENCODING_S
    # Each stage holds its own delay and not the other's (a second of slack: a loaded machine ran the MLP in 0.37 s).
    assert composite_s <= stages["compositing"] < encoding_s
    assert encoding_s <= stages["encoding"] < encoding_s + composite_s
    assert stages["MLP"] < composite_s and stages["other"] < composite_s
    assert result["total_s"] >= 2 * (SLOW_COMPOSITE_S + SLOW_ENCODING_S)


def test_analyze_merges_each_analysis_into_analyses_json(trained_runs, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    # An earlier analyses.json: a stale activation_sparsity (of a deleted run) and a time_breakdown.
    (out / "analyses.json").write_text(json.dumps({"activation_sparsity": {"deleted": []}, "time_breakdown": {"x": 1}}))
    analyze.main(["--runs", str(trained_runs), "--out", str(out), "--only", "activation_sparsity"])
    first = json.loads((out / "analyses.json").read_text())
    analyze.main(["--runs", str(trained_runs), "--out", str(out), "--only", "weight_sparsity"])
    results = json.loads((out / "analyses.json").read_text())
    assert results["time_breakdown"] == {"x": 1}  # not rerun: kept as it was
    assert set(results["activation_sparsity"]) == {"bitnerf", "nerf"}  # rerun: replaced whole
    assert results["activation_sparsity"] == first["activation_sparsity"]  # kept by the second run
    nerf_layers = json.loads((trained_runs / "nerf" / "layers.json").read_text())["layers"]
    assert [layer["input_sparsity"] for layer in results["activation_sparsity"]["nerf"]] == [
        layer["input_sparsity"] for layer in nerf_layers
    ]
    assert {"ternary_zero" in layer for layer in results["weight_sparsity"]["bitnerf"]} == {True, False}
    assert not any("ternary_zero" in layer for layer in results["weight_sparsity"]["nerf"])
    # The thresholds the module docstring states, for report.py.
    assert results["definitions"] == {
        "near_zero_weight": 1e-3,
        "skippable_weight": 1e-4,
        "pixel_stride": 2,
        "time_stages": ["ray generation", "sampling", "encoding", "MLP", "compositing", "other"],
    }

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        analyze.main(["--runs", str(tmp_path / "nothing"), "--out", str(out)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: no runs folder {tmp_path / 'nothing'}: train first (make suite, or python exp1.py --quick),"
        " or pass --runs"
    ]


# evaluation.py: what layers.json and summary.json's test metrics record.

TINY = replace(
    configs.QUICK, depth=2, width=4, pos_freqs=0, use_viewdirs=False, n_coarse=4, n_fine=2, occupancy_grid=False
)  # every sample evaluated: the counts below are by hand


def set_relu_pattern(layer: torch.nn.Linear, signs: list[float]) -> None:
    """Outputs that ignore the input: bias `signs`, so ReLU zeroes exactly the negative ones."""
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.copy_(torch.tensor(signs))


def census_scene(tmp_path):
    """Six 4x4 views on a circle of radius 4. Bounds off the round numbers: no sample lands at t = 4, where
    the centre pixel's ray passes the origin and a point would have exactly-zero coordinates."""
    return load_scene(
        str(write_scene(tmp_path / "scene.npz", n=6, size=4, near=np.float32(2.05), far=np.float32(6.15)))
    )


def test_layer_census_counts_each_layer_s_zero_inputs_by_hand(tmp_path):
    scene = census_scene(tmp_path)
    model = bitnerf.build_model(TINY, scene, CPU)
    set_relu_pattern(model.coarse.layers[0], [1.0, 1.0, -1.0, -1.0])  # 2 of coarse.layers.1's 4 inputs are 0
    set_relu_pattern(model.coarse.layers[1], [1.0, -1.0, -1.0, -1.0])  # 3 of the coarse head's 4
    set_relu_pattern(model.fine.layers[0], [1.0, -1.0, -1.0, -1.0])  # 3 of fine.layers.1's 4
    set_relu_pattern(model.fine.layers[1], [1.0, 1.0, 1.0, -1.0])  # 1 of the fine head's 4
    census = Evaluation(scene, TINY, CPU, None).layers(model)
    by_name = {layer["name"]: layer for layer in census["layers"]}
    assert list(by_name) == [
        "coarse.layers.0",
        "coarse.layers.1",
        "coarse.output_head",
        "fine.layers.0",
        "fine.layers.1",
        "fine.output_head",
    ]
    assert {name: layer["input_sparsity"] for name, layer in by_name.items()} == {
        "coarse.layers.0": 0.0,
        "coarse.layers.1": 0.5,
        "coarse.output_head": 0.75,  # layers.0 reads the points
        "fine.layers.0": 0.0,
        "fine.layers.1": 0.75,
        "fine.output_head": 0.25,
    }
    # An 800x800 frame: 4 coarse samples per ray, then 4 + 2 in the fine pass.
    assert by_name["coarse.layers.1"]["samples_per_frame"] == 640_000 * 4
    assert by_name["fine.output_head"]["samples_per_frame"] == 640_000 * 6
    assert census["samples_per_frame"] == 640_000 * 10
    assert (census["precision"], census["weight_bits"]) == ("fp32", 32)
    assert (by_name["fine.layers.1"]["in_features"], by_name["fine.output_head"]["out_features"]) == (4, 4)
    assert {(l["weight_bits"], l["input_bits"], l["output_bits"]) for l in census["layers"]} == {(32, 32, 32)}
    assert model.training  # the census restores the mode it found


def test_layer_census_of_bitnerf_records_ternary_weights_and_int8_inputs(tmp_path):
    scene = census_scene(tmp_path)
    model = bitnerf.build_model(replace(TINY, model="bitnerf"), scene, CPU)
    census = Evaluation(scene, TINY, CPU, torch.bfloat16).layers(model)
    bits = {
        layer["name"]: (layer["weight_bits"], layer["input_bits"], layer["output_bits"]) for layer in census["layers"]
    }
    # Hidden layers: 2-bit packed ternary weights times int8 rows, rescaled in fp32 (torchao's BitNet linear runs
    # before autocast could cast it), as measured; the heads bf16.
    assert bits == {
        f"{field}.{layer}.linear": (2, 8, 32) if layer != "output_head" else (16, 16, 16)
        for field in ("coarse", "fine")
        for layer in ("layers.0", "layers.1", "output_head")
    }
    assert (census["precision"], census["weight_bits"]) == ("ternary-int8", 1.58)


def depth_scene(tmp_path, with_depths: bool):
    """Six 16x16 views, test views 4 and 5; ground-truth depth 3 in view 4, 4 in view 5, and 0 in the others."""
    depths = np.zeros((6, 16, 16), dtype=np.float32)
    depths[4], depths[5] = 3.0, 4.0
    extra = {"depths": depths} if with_depths else {}
    return load_scene(
        str(write_scene(tmp_path / f"depths_{with_depths}.npz", n=6, size=16, i_test=np.array([4, 5]), **extra))
    )


def hand_made_results(scene) -> list[dict]:
    """Depth 3 -/+ 1 in view 4 (half the pixels each way) and 4.5 everywhere in view 5; PSNR and SSIM per view,
    as test_views gives them."""
    view4 = torch.full((16, 16), 3.0)
    view4[:8] += 1.0
    view4[8:] -= 1.0
    view5 = torch.full((16, 16), 4.5)
    return [
        {"view": view, "rgb": torch.from_numpy(scene.images[view]), "depth": depth, "psnr": psnr, "ssim": ssim}
        for view, depth, psnr, ssim in ((4, view4, 10.0, 0.5), (5, view5, 21.0, 0.75))
    ]


def test_metrics_average_psnr_ssim_and_absolute_depth_error_over_the_test_views(tmp_path):
    scene = depth_scene(tmp_path, with_depths=True)
    metrics = Evaluation(scene, TINY, CPU, None).metrics(hand_made_results(scene))
    # |error| is 1 at every pixel of view 4 (a signed mean would be 0) and 0.5 in view 5: mean 0.75.
    assert metrics == {
        "psnr_test": 15.5,
        "ssim_test": 0.625,
        "psnr_test_per_view": [10.0, 21.0],
        "depth_abs_error_test": 0.75,
    }


def test_metrics_of_a_scene_without_depths_have_no_depth_error(tmp_path):
    scene = depth_scene(tmp_path, with_depths=False)
    metrics = Evaluation(scene, TINY, CPU, None).metrics(hand_made_results(scene))
    assert "depth_abs_error_test" not in metrics and metrics["psnr_test"] == 15.5
