"""What fused AdamW (step.Optimization.build's `fused=True`) changes: the numerics (the largest parameter
difference from the for-loop AdamW after a few steps from the same start) and the speed (whole training steps,
and `AdamW.step` alone, with the for-loop, foreach and fused implementations), timed in interleaved rounds of
which each keeps its fastest. Its result is in docs/performance.md, "Fused AdamW". Run it on a quiet machine:

    .venv/bin/python benchmarks/fused_adamw.py --data ../shared/data/lego_100.npz

Prints the numerics per experiment, then milliseconds per step for each implementation.
"""

import argparse
import copy
import sys
import time
import unittest.mock
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import bitnerf  # noqa: E402
from benchmarks.common import CPU, add_common_flags, add_counts, config_of, parse, training  # noqa: E402
from dataset import load_scene  # noqa: E402
from utils import exit_on_user_error  # noqa: E402

# The keyword arguments that force each AdamW implementation over step.Optimization.build's own.
ADAMW = {
    "for-loop": {"fused": False, "foreach": False},
    "foreach": {"fused": False, "foreach": True},
    "fused": {"fused": True},
}


def forced_training(config, scene, kind: str, model=None):
    """common.training with AdamW forced to implementation `kind`."""
    adamw = torch.optim.AdamW
    forced = lambda *args, **kwargs: adamw(*args, **{**kwargs, **ADAMW[kind]})  # noqa: E731
    with unittest.mock.patch("torch.optim.AdamW", forced):
        return training(config, scene, model)


def max_difference(config, scene, steps: int) -> float:
    """The largest |fused - for-loop| of any parameter after `steps` steps from the same initial weights."""
    torch.manual_seed(config.seed)
    initial = bitnerf.build_model(config, scene, CPU)
    weights = {}
    for kind in ("for-loop", "fused"):
        run = forced_training(config, scene, kind, copy.deepcopy(initial))
        for i in range(steps):
            run.step(i)
        weights[kind] = run.model.state_dict()
    return max(
        (weights["fused"][k].float() - weights["for-loop"][k].float()).abs().max().item() for k in weights["fused"]
    )


def best_times(steps: dict, optimizers: dict, rounds: int, step_repeats: int, optimizer_repeats: int) -> dict:
    """Seconds per call of each step function and each optimizer's step, the fastest of `rounds` interleaved rounds."""
    best = dict.fromkeys([*steps, *optimizers], float("inf"))
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for i in range(step_repeats):
                step(i)
            best[name] = min(best[name], (time.perf_counter() - start) / step_repeats)
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            for _ in range(optimizer_repeats):
                optimizer.step()
            best[name] = min(best[name], (time.perf_counter() - start) / optimizer_repeats)
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_flags(parser)
    parser.add_argument(
        "--numerics",
        nargs="+",
        default=["exp1", "exp4"],
        help="experiments whose numerics to compare (default exp1 exp4)",
    )
    parser.add_argument(
        "--speed", nargs="+", default=["exp1", "exp2"], help="experiments whose steps to time (default exp1 exp2)"
    )
    add_counts(
        parser,
        {
            "numerics-steps": (5, 2, "steps before comparing weights"),
            "rounds": (10, 1, "interleaved rounds"),
            "steps": (10, 1, "training steps per round"),
            "optimizer-steps": (50, 2, "AdamW steps per round"),
        },
    )
    args = parse(parser, argv)
    with exit_on_user_error():
        scene = load_scene(args.data)
        differences = {}
        for name in args.numerics:
            differences[name] = max_difference(config_of(name, args.full, args.tiny), scene, args.numerics_steps)
            print(
                f"{name}: fused - for-loop after {args.numerics_steps} steps, max |difference| ="
                f" {differences[name]:.1e}"
            )
        steps = {
            f"{name} step, {kind}": forced_training(config_of(name, args.full, args.tiny), scene, kind).step
            for name in args.speed
            for kind in ADAMW
        }
        optimizers = {
            f"AdamW.step alone, {kind}": forced_training(
                config_of(args.speed[0], args.full, args.tiny), scene, kind
            ).optimization.optimizer
            for kind in ADAMW
        }
        for optimizer in optimizers.values():
            for p in optimizer.param_groups[0]["params"]:
                p.grad = torch.randn_like(p)
        best = best_times(steps, optimizers, args.rounds, args.steps, args.optimizer_steps)
        print(f"{torch.get_num_threads()} threads, ms (best of {args.rounds} rounds):")
        print("\n".join(f"  {name}: {1e3 * s:.2f}" for name, s in best.items()))
    return {"max_difference": differences, "seconds": best}


if __name__ == "__main__":
    main()
