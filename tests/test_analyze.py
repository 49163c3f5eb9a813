import json
from pathlib import Path

import pytest
import torch

import analyze
import nerf

CPU = torch.device("cpu")


def trained(runs_dir: Path, name: str) -> analyze.TrainedRun:
    return analyze.TrainedRun(runs_dir / name, None, CPU, n_views=1)


def test_activation_sparsity_is_what_training_measured(trained_runs):
    layers = json.loads((trained_runs / "nerf" / "layers.json").read_text())["layers"]
    result = analyze.activation_sparsity(trained(trained_runs, "nerf"))
    assert result == [{"name": layer["name"], "input_sparsity": layer["input_sparsity"]} for layer in layers]
    assert result[1]["input_sparsity"] > 0.0  # after a ReLU


def test_weight_sparsity_counts_near_zero_weights_and_ternary_zeros(trained_runs):
    run = trained(trained_runs, "nerf")
    with torch.no_grad():
        layer0, layer1 = run.model.coarse.layers[0], run.model.coarse.layers[1]
        # Half the weights are at most 1e-3 of the largest: 0 and 1e-4 against 1.
        layer0.weight.copy_(torch.tensor([0.0, 1e-4, 0.5, 1.0]).repeat(layer0.weight.numel() // 4).view_as(layer0.weight))
        layer1.weight.zero_()
    result = {layer["name"]: layer for layer in analyze.weight_sparsity(run)}
    layer_names = [layer["name"] for layer in json.loads((trained_runs / "nerf" / "layers.json").read_text())["layers"]]
    assert list(result) == layer_names
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
    assert all(0.0 <= layer.get("ternary_zero", 0.0) <= 1.0 for layer in bit_result.values())


def set_constant_density(model: nerf.NeRF, raw_density: float) -> None:
    """Make both fields output raw density `raw_density` everywhere (the quick preset's output head: rgb, density)."""
    with torch.no_grad():
        for field in (model.coarse, model.fine):
            field.output_head.weight.zero_()
            field.output_head.bias.copy_(torch.tensor([0.0, 0.0, 0.0, raw_density]))


def test_render_weight_sparsity_separates_empty_space_from_occlusion(trained_runs):
    result = analyze.render_weight_sparsity(trained(trained_runs, "nerf"))
    assert result["views"] == [5]
    assert {name: p["samples_per_ray"] for name, p in result["passes"].items()} == {"coarse": 8, "fine": 16}
    for p in result["passes"].values():
        assert 0.0 <= p["empty_space"] <= p["skippable"] <= 1.0 and 0.0 <= p["behind_surface"] <= 1.0
        assert p["skippable"] == pytest.approx(p["empty_space"] + p["behind_surface"], abs=2e-4)

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


def test_time_breakdown_covers_the_rendering_stages_and_restores_nerf(trained_runs):
    originals = (nerf.composite, nerf.sample_stratified, nerf.sample_pdf, nerf.PositionalEncoding.forward,
                 nerf.RadianceField.forward)
    for name in ("nerf", "bitnerf"):
        result = analyze.time_breakdown(trained(trained_runs, name))
        stages = result["stages_s"]
        assert tuple(stages) == analyze.TIME_STAGES and result["pixels"] == 16 * 16 and result["device"] == "cpu"
        assert all(stages[s] > 0 for s in ("ray generation", "sampling", "encoding", "MLP", "compositing"))
        assert stages["other"] >= -1e-4
        assert sum(stages.values()) == pytest.approx(result["total_s"], abs=1e-4)
    assert originals == (nerf.composite, nerf.sample_stratified, nerf.sample_pdf, nerf.PositionalEncoding.forward,
                         nerf.RadianceField.forward)


def test_analyze_merges_each_analysis_into_analyses_json(trained_runs, tmp_path, capsys):
    out = tmp_path / "report"
    analyze.main(["--runs", str(trained_runs), "--out", str(out), "--only", "activation_sparsity"])
    analyze.main(["--runs", str(trained_runs), "--out", str(out), "--only", "weight_sparsity"])
    results = json.loads((out / "analyses.json").read_text())
    assert set(results) == {"activation_sparsity", "weight_sparsity"}
    assert all(set(by_run) == {"bitnerf", "nerf"} for by_run in results.values())

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        analyze.main(["--runs", str(tmp_path / "nothing"), "--out", str(out)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: no runs folder {tmp_path / 'nothing'}: train first (make suite, or python exp1.py --quick), or pass --runs"]
