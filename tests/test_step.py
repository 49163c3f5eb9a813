from dataclasses import replace

import pytest
import torch

import configs
from step import Optimization, lr_factor

QUICK = configs.QUICK


def test_the_plain_schedule_is_exponential_decay_from_lr_to_lr_final():
    config = replace(QUICK, steps=100, lr=1e-2, lr_final=1e-4)
    assert [lr_factor(config, s) for s in (0, 50, 100, 200)] == pytest.approx([1.0, 0.1, 0.01, 0.01])


def test_warm_up_rises_linearly_and_the_second_stage_scales_the_decay():
    config = replace(QUICK, steps=100, lr=1e-2, lr_final=1e-4, warmup_steps=10, stage2_at=0.5, stage2_lr_scale=0.5)
    assert lr_factor(config, 0) == pytest.approx(0.1 * 0.01**0.0)
    assert lr_factor(config, 4) == pytest.approx(0.5 * 0.01**0.04)
    assert lr_factor(config, 49) == pytest.approx(0.01**0.49)  # the last step of the first stage
    assert lr_factor(config, 50) == pytest.approx(0.5 * 0.1)  # the second stage's first step: half of it


def test_weight_decay_stops_in_the_second_stage_and_follows_a_restored_scheduler():
    config = replace(QUICK, steps=10, weight_decay=0.1, stage2_at=0.6)
    model = torch.nn.Linear(2, 2)
    optimization = Optimization.build(config, model, torch.device("cpu"), None)
    decays = []
    for _ in range(config.steps):
        optimization.schedule_weight_decay()
        decays.append(optimization.optimizer.param_groups[0]["weight_decay"])
        model(torch.ones(1, 2)).sum().backward()
        optimization.optimizer.step()
        optimization.scheduler.step()
    assert decays == [0.1] * 6 + [0.0] * 4
    restored = Optimization.build(config, torch.nn.Linear(2, 2), torch.device("cpu"), None)
    restored.scheduler.load_state_dict(optimization.scheduler.state_dict())
    restored.schedule_weight_decay()  # a resumed run past the stage boundary has none
    assert restored.optimizer.param_groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"stage2_at": 0.0}, "stage2_at is the fraction"),
        ({"stage2_lr_scale": 2.0}, "stage2_lr_scale must lie in"),
        ({"warmup_steps": -1}, "warmup_steps must not be negative"),
    ],
)
def test_bad_schedules_are_user_errors(overrides, message):
    from utils import UserError

    with pytest.raises(UserError, match=message):
        replace(QUICK, **overrides)
