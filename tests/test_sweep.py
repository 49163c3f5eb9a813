import json

import pytest

import sweep
from utils import UserError


def test_candidates_are_ranked_by_mean_validation_psnr_over_the_scenes(tmp_path, capsys):
    # Finished runs are read, not trained again: the table comes from their summary.json files.
    val = {
        ("plain", "builtin"): 20.0,
        ("plain", "lego"): 24.0,
        ("lr2x", "builtin"): 21.0,
        ("lr2x", "lego"): 22.0,
        ("wd", "builtin"): 23.0,
        ("wd", "lego"): 23.5,
    }
    for (name, scene), psnr in val.items():
        run_dir = tmp_path / "exp4" / scene / name
        run_dir.mkdir(parents=True)
        (run_dir / "summary.json").write_text(json.dumps({"psnr_val": psnr, "psnr_test": 99.0, "model_bytes": 52000}))
    sweep.main(
        [
            "exp4",
            "--data",
            "builtin",
            "--data",
            str(tmp_path / "lego.npz"),
            "--out",
            str(tmp_path),
            "--candidate",
            "plain=",
            "--candidate",
            "lr2x=--lr 1e-2",
            "--candidate",
            "wd=--weight-decay 0.1",
        ]
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "`" in line]
    assert rows == [
        "| wd | `--weight-decay 0.1` | 23.00 | 23.50 | 23.25 | 52 kB |",
        "| plain | `(none)` | 20.00 | 24.00 | 22.00 | 52 kB |",
        "| lr2x | `--lr 1e-2` | 21.00 | 22.00 | 21.50 | 52 kB |",
    ]


def test_a_run_trains_its_experiment_quick_with_held_out_views_and_the_candidate_flags(tmp_path):
    command = sweep.run_command("exp4", "builtin", 10, ["--lr", "1e-2"], tmp_path / "builtin" / "lr2x")
    assert command[1:3] == ["exp4.py", "--quick"] and "--data" not in command
    assert command[command.index("--val-views") + 1] == "10" and command[-2:] == ["--lr", "1e-2"]
    assert command[command.index("--name") + 1] == "lr2x"


@pytest.mark.parametrize("text", ["lr2x", "=--lr 1", "a/b=--lr 1"])
def test_a_candidate_needs_a_plain_name_and_an_equals_sign(text):
    with pytest.raises(UserError, match="give NAME=FLAGS"):
        sweep.parse_candidate(text)
