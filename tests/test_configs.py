import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import configs
from configs import EXP1, QUICK, ExperimentConfig, experiment
from utils import UserError

REPO = Path(__file__).resolve().parents[1]
AXIS_FIELDS = {"exp1": set(), "exp2": {"precision"}, "exp3": {"precision", "batch_rays", "steps", *configs.STEP_INTERVALS},
               "exp4": {"model"}, "exp5": {"distributed"}, "exp6": {"model", "distributed"}}


def changed_fields(a: ExperimentConfig, b: ExperimentConfig) -> set[str]:
    return {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)} - {"name"}


@pytest.mark.parametrize("name", sorted(AXIS_FIELDS))
@pytest.mark.parametrize("base", [EXP1, QUICK], ids=["full", "quick"])
def test_each_experiment_changes_only_its_axis(name, base):
    assert changed_fields(experiment(name, base), base) == AXIS_FIELDS[name]
    assert experiment(name, base).name == name


@pytest.mark.parametrize("base", [EXP1, QUICK], ids=["full", "quick"])
def test_the_ddp_experiments_add_only_ddp_to_their_single_process_twins(base):
    assert changed_fields(experiment("exp5", base), experiment("exp1", base)) == {"distributed"}
    assert changed_fields(experiment("exp6", base), experiment("exp4", base)) == {"distributed"}


def test_module_constants_are_the_full_experiments():
    assert configs.EXP2 == experiment("exp2") and configs.EXP3 == experiment("exp3")
    assert configs.EXP3.batch_rays == 4 * EXP1.batch_rays and configs.EXP2.precision == "amp"
    assert configs.EXP3.batch_rays * configs.EXP3.steps == EXP1.batch_rays * EXP1.steps  # equal ray budget
    assert configs.EXP3.batch_rays * configs.EXP3.eval_every == EXP1.batch_rays * EXP1.eval_every


def test_seed_configuration_is_expressible():
    """The seed's model: one MLP on points only, 16 frequencies, 32 samples, no fine pass."""
    seed = dataclasses.replace(EXP1, use_viewdirs=False, pos_freqs=16, n_coarse=32, n_fine=0)
    assert seed.samples_per_ray == 32


def test_command_line_overrides_apply_on_top_of_the_preset():
    config, args = configs.parse_args("exp3", ["--quick", "--steps", "7", "--skips", "1", "--no-perturb"])
    assert config.steps == 7 and config.skips == (1,) and not config.perturb
    assert config.batch_rays == 4 * QUICK.batch_rays and config.precision == "amp" and config.name == "exp3"
    assert not args.resume
    assert configs.parse_args("exp1", [])[0] == EXP1


@pytest.mark.parametrize("overrides, message", [
    ({"steps": 0}, "steps must be at least 1"),
    ({"precision": "fp8"}, "precision must be one of"),
    ({"lr_final": 1.0}, "lr_final <= lr"),
    ({"skips": (9,)}, "skips must lie in"),
    ({"n_fine": -1}, "n_fine must not be negative"),
])
def test_bad_values_raise_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        dataclasses.replace(EXP1, **overrides)


@pytest.mark.parametrize("argv, message", [
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--steps", "many"], "invalid int value"),
    (["--steps", "-3"], "steps must be at least 1"),
    (["--precision", "fp8"], "precision must be one of"),
])
def test_command_line_errors_are_one_line_with_exit_code_2(argv, message, tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "exp1.py"), *argv, "--out", str(tmp_path)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
