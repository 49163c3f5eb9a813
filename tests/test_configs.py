import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import command_line
import configs
from configs import EXP1, QUICK, ExperimentConfig, experiment
from nerf import NeRF
from utils import UserError

REPO = Path(__file__).resolve().parents[1]
AXIS_FIELDS = {
    "exp1": set(),
    "exp2": {"precision"},
    "exp3": {"precision", "batch_rays", "steps", "log_every", "eval_every", "ckpt_every"},
    "exp4": {"model", *configs.BITNET_RECIPE},
    "exp5": {"distributed"},
    "exp6": {"model", *configs.BITNET_RECIPE, "distributed"},
    "exp7": {"quantized_training"},
    "exp8": {"quantized_training"},
    "exp9": {"distributed", "grad_compression"},
}


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
    assert changed_fields(experiment("exp9", base), experiment("exp5", base)) == {"grad_compression"}


@pytest.mark.parametrize(
    "base, expected",
    [
        # 4096 rays x 11000 steps = 16384 x 2750; eval and checkpoints every 1000 x 4096 rays = 250 x 16384.
        (EXP1, dict(batch_rays=16384, steps=2750, log_every=25, eval_every=250, ckpt_every=250)),
        (QUICK, dict(batch_rays=1024, steps=900, log_every=25, eval_every=225, ckpt_every=225)),
        # Spacing below 4 steps stays 1: never 0 (which would log, evaluate or save never, or divide by zero).
        (
            dataclasses.replace(QUICK, steps=8, log_every=2, eval_every=3, ckpt_every=5),
            dict(batch_rays=1024, steps=2, log_every=1, eval_every=1, ckpt_every=1),
        ),
    ],
    ids=["full", "quick", "short"],
)
def test_exp3_is_four_times_the_batch_at_the_same_rays_by_hand(base, expected):
    exp3 = experiment("exp3", base)
    assert {k: getattr(exp3, k) for k in expected} == expected and exp3.precision == "amp"
    assert experiment("exp2", base).precision == "amp" and base.precision == "fp32"


def test_samples_and_jitter_per_ray_by_hand():
    # The fine pass evaluates the coarse samples again, with the fine ones.
    assert (EXP1.samples_per_ray, EXP1.jitter_per_ray) == (64 + 64 + 64, 64 + 64)
    assert (QUICK.samples_per_ray, QUICK.jitter_per_ray) == (16 + 16 + 32, 16 + 32)
    assert dataclasses.replace(QUICK, perturb=False).jitter_per_ray == 0


def test_seed_configuration_is_expressible():
    """The seed's model: one MLP on points only, 16 frequencies, 32 samples, no fine pass."""
    seed = dataclasses.replace(EXP1, use_viewdirs=False, pos_freqs=16, n_coarse=32, n_fine=0)
    assert seed.samples_per_ray == 32 and seed.jitter_per_ray == 32


def test_command_line_overrides_apply_on_top_of_the_preset():
    config, args = command_line.parse_args("exp3", ["--quick", "--steps", "28", "--skips", "1", "--no-perturb"])
    assert config.steps == 7 and config.skips == (1,) and not config.perturb  # exp1's 28 steps of a 4x smaller batch
    # The rest is the quick exp3: 4 x 256 rays, AMP, the quick 4x128 MLP.
    assert (config.batch_rays, config.precision, config.name, config.width, config.lr) == (
        1024,
        "amp",
        "exp3",
        128,
        5e-3,
    )
    assert args.quick and not args.resume
    assert command_line.parse_args("exp1", [])[0] == EXP1  # no flag: every field at its default
    full4, _ = command_line.parse_args("exp4", [])
    assert (full4.model, full4.width, full4.steps, full4.batch_rays) == ("bitnerf", 256, 11000, 4096)
    # The preset a run started from, which W&B tags it with: --quick, kept under overrides; no option of its own.
    assert (config.preset, full4.preset, dataclasses.replace(QUICK, steps=3).preset) == ("quick", "full", "quick")


@pytest.mark.parametrize(
    "argv",
    [
        ["--quick"],
        ["--quick", "--steps", "300", "--log-every", "20", "--eval-every", "100", "--ckpt-every", "2"],
        ["--steps", "40"],
    ],
)
def test_exp3_given_steps_keeps_the_rays_of_exp1_and_exp2_given_the_same(argv, capsys):
    exp1, exp2, exp3 = (command_line.parse_args(name, argv)[0] for name in ("exp1", "exp2", "exp3"))
    assert exp3.steps * exp3.batch_rays == exp2.steps * exp2.batch_rays == exp1.steps * exp1.batch_rays
    assert changed_fields(exp3, exp2) == {"batch_rays", *configs.STEP_COUNTS}  # one axis against exp2
    # Evaluations, logs and checkpoints fall on the same rays (a spacing below 4 steps stays 1).
    for key in configs.STEP_INTERVALS:
        assert exp3.batch_rays * getattr(exp3, key) == max(exp2.batch_rays * getattr(exp2, key), exp3.batch_rays)
    if "--steps" in argv:
        assert f"{exp3.steps} steps of {exp3.batch_rays} rays, the same rays" in capsys.readouterr().err


def test_exp3_refuses_steps_that_no_equal_budget_of_rays_has(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "exp3.py"), "--quick", "--steps", "301", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "error: --steps 301: exp3 trains 1/4 of the steps at 4x the batch (the rays of exp1 --steps N), so give a"
        " multiple of 4"
    ]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"steps": 0}, "steps must be at least 1"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"lr_final": 1.0}, "lr_final <= lr"),
        ({"skips": (9,)}, "skips must lie in"),
        ({"n_fine": -1}, "n_fine must not be negative"),
        ({"n_coarse": 2, "n_fine": 4}, "needs n_coarse of at least 3"),
        ({"grad_compression": "bf16"}, "compresses what DDP's processes send each other: add --distributed"),
        ({"model": "bitnerf", "quantized_training": "int8"}, "BitNeRF trains its own ternary ones"),
    ],
)
def test_bad_values_raise_user_errors(overrides, message):
    with pytest.raises(UserError, match=message):
        dataclasses.replace(EXP1, **overrides)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--steps", "many"], "invalid int value"),
        (["--steps", "-3"], "steps must be at least 1"),
        (["--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
        (["--seeds", "0,a"], "expected comma-separated seeds"),
        (["--seeds", "1,1"], "seeds must be distinct"),
        (["--seeds", "0,1", "--seed", "3"], "give --seed or --seeds, not both"),
        (["--preset", "quick"], "unrecognized arguments: --preset"),
        # --quick --steps 1: should the refusal go, the test fails after a short run rather than a whole training.
        (
            ["--quick", "--steps", "1", "--grad-compression", "bf16"],
            "--grad-compression bf16 compresses what DDP's processes send each other: add",
        ),
        (
            ["--quick", "--steps", "1", "--model", "bitnerf", "--quantized-training", "fp8-rowwise"],
            "BitNeRF trains its own ternary ones",
        ),
    ],
)
def test_command_line_errors_are_one_line_with_exit_code_2(argv, message, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "exp1.py"), *argv, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_two_coarse_samples_without_a_fine_pass_render():
    """The smallest configurations the checks allow run: 2 coarse samples alone, 3 with a fine pass."""
    for n_coarse, n_fine in ((2, 0), (3, 2)):
        config = dataclasses.replace(EXP1, n_coarse=n_coarse, n_fine=n_fine)
        model = NeRF(2.0, 6.0, False, n_coarse=config.n_coarse, n_fine=config.n_fine, depth=1, width=4).eval()
        assert model(torch.zeros(1, 3), torch.ones(1, 3))["rgb"].shape == (1, 3)


def test_each_seed_of_seeds_is_a_run_of_its_own_named_for_it_in_the_experiments_group():
    argv = ["--quick", "--seeds", "0,2", "--steps", "8", "--name", "lr"]
    runs = [command_line.parse_args("exp3", a)[0] for a in command_line.seed_argvs(argv, [0, 2], "lr")]
    assert [(c.name, c.seed, c.group) for c in runs] == [("lr-seed0", 0, "lr"), ("lr-seed2", 2, "lr")]
    assert all(
        dataclasses.replace(c, name="x", seed=0, group=None)
        == dataclasses.replace(command_line.parse_args("exp3", ["--quick", "--steps", "8"])[0], name="x")
        for c in runs
    )


PLAIN_RECIPE = [
    "--first-layer",
    "ternary",
    "--warmup-steps",
    "0",
    "--stage2-at",
    "1",
    "--stage2-lr-scale",
    "1",
    "--weight-decay",
    "0",
]


def test_bitnerf_s_recipe_is_part_of_its_axis_and_flags_give_exp1_s_recipe_back():
    for name, twin in (("exp4", "exp1"), ("exp6", "exp5")):
        plain, _ = command_line.parse_args(name, ["--quick", *PLAIN_RECIPE])
        assert plain == dataclasses.replace(experiment(twin, QUICK), model="bitnerf", name=name)
        assert experiment(name, QUICK) != plain  # the recipe is not exp1's


def test_a_checkpoint_saved_before_first_layer_existed_reads_as_today_s_fields():
    saved = dataclasses.asdict(experiment("exp4", QUICK))
    del saved["first_layer"]
    for old, new in ((True, "ternary"), (False, "fp32")):
        fields = configs.saved_fields({**saved, "quantize_first_layer": old, "skips": list(saved["skips"])})
        assert configs.ExperimentConfig(**fields) == dataclasses.replace(experiment("exp4", QUICK), first_layer=new)


def field_help(action) -> str:
    """An option's own help, less the default that build_parser appends."""
    return action.help.partition(" [default: ")[0].strip()


@pytest.mark.parametrize("name", sorted(configs.AXES))
def test_every_option_of_every_experiment_says_what_it_does_its_choices_and_its_default(name):
    assert f'train.main("{name}")' in (REPO / f"{name}.py").read_text()  # expN.py's parser is build_parser(expN)
    parser = command_line.build_parser(name)
    usage, fields = parser.format_help(), {f.name: f for f in command_line.CLI_FIELDS}
    for action in parser._actions:
        assert field_help(action), f"{name}.py {'/'.join(action.option_strings)} has no help"
        if action.dest in fields:
            assert action.help.endswith(f" [{command_line.default_help(name, action.dest)}]")
        if action.dest in configs.CHOICES:
            assert tuple(action.choices) == configs.CHOICES[action.dest]
            assert "{" + ",".join(configs.CHOICES[action.dest]) + "}" in usage
        else:
            assert action.choices is None
    options = {a.dest for a in parser._actions}
    assert set(fields) <= options  # every field is an option, in one group
    assert sorted(k for keys in command_line.FIELD_GROUPS.values() for k in keys) == sorted(fields)


def test_help_shows_the_defaults_of_its_own_experiment_and_of_the_quick_preset():
    def help_of(name, flag):
        return next(a.help for a in command_line.build_parser(name)._actions if flag in a.option_strings)

    assert help_of("exp1", "--steps").endswith("[default: 11000; --quick: 3600]")
    assert help_of("exp3", "--steps").endswith(
        "[default: 11000 (2750 of exp3's steps); --quick: 3600 (900 of exp3's steps)]"
    )
    assert help_of("exp1", "--first-layer").endswith("[default: ternary]")
    assert help_of("exp4", "--first-layer").endswith("[default: int8]")
    assert help_of("exp1", "--skips").endswith("[default: 4; --quick: none]")
    assert help_of("exp1", "--micro-batch-rays").endswith("[default: auto]")
    assert help_of("exp5", "--distributed").endswith("[default: on]")
    result = subprocess.run(
        [sys.executable, str(REPO / "exp4.py"), "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0 and "--model {nerf,bitnerf}" in result.stdout
    assert "[default: bitnerf]" in " ".join(result.stdout.split())


def test_docs_flags_md_is_what_configs_py_writes_now():
    assert (REPO / "docs" / "flags.md").read_text() == command_line.flags_markdown(), (
        "docs/flags.md is stale: run `python command_line.py > docs/flags.md`"
    )
