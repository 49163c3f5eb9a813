"""What splitting a step into micro-batches costs: training samples/s of the same steps in one pass and in
N micro-batches (step.train_step), timed in interleaved rounds of which each side keeps its fastest, so that
load from elsewhere does not skew one side alone. Run it on a quiet machine:

    .venv/bin/python benchmarks/micro_batches.py --quick exp1 exp4
    .venv/bin/python benchmarks/micro_batches.py exp1 --batch-rays 1024   # the full model, a smaller batch

Prints one line per experiment: samples/s in one pass, in N micro-batches, and the overhead.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import bitnerf  # noqa: E402
import configs  # noqa: E402
import precision  # noqa: E402
from dataset import RaySampler, load_scene  # noqa: E402
from devices import Stopwatch
from step import Optimization, train_step  # noqa: E402
from utils import exit_on_user_error


def samples_per_s(
    config: configs.ExperimentConfig, scene, micro_batch_rays: int, steps: int, rounds: int
) -> list[float]:
    """Per round, training samples/s of `steps` steps of config split into parts of micro_batch_rays (0: one pass)."""
    device = torch.device("cpu")
    dtype = precision.amp_dtype(config, device)
    torch.manual_seed(config.seed)
    model = bitnerf.build_model(config, scene, device).train()
    optimization = Optimization.build(config, model, device, dtype)
    sampler = RaySampler(scene, device, config.batch_rays, config.seed, config.jitter_per_ray)
    autocast = lambda: precision.autocast(device, dtype)  # noqa: E731
    train_step(model, sampler.batch(0), optimization, config, autocast, micro_batch_rays)  # warm-up
    rates = []
    for round_index in range(rounds):
        clock = Stopwatch(device)
        with clock:
            for step in range(steps):
                train_step(
                    model,
                    sampler.batch(1 + round_index * steps + step),
                    optimization,
                    config,
                    autocast,
                    micro_batch_rays,
                )
        rates.append(steps * config.batch_rays * config.samples_per_ray / clock.elapsed)
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="+", choices=list(configs.AXES))
    parser.add_argument("--quick", action="store_true", help="the quick preset (default: the full configuration)")
    parser.add_argument("--batch-rays", type=int, default=None, help="rays per step (default: the experiment's)")
    parser.add_argument("--micro-batches", type=int, default=4, help="micro-batches per step (default 4)")
    parser.add_argument("--steps", type=int, default=20, help="steps per round (default 20)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per side (default 5)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        scene = load_scene(None)
        for name in args.experiments:
            config = configs.experiment(name, configs.QUICK if args.quick else configs.EXP1)
            config = dataclasses.replace(config, batch_rays=args.batch_rays or config.batch_rays, distributed=False)
            part = -(-config.batch_rays // args.micro_batches)
            whole, split = [], []
            for _ in range(args.rounds):  # interleaved: one round of each side at a time
                whole += samples_per_s(config, scene, 0, args.steps, 1)
                split += samples_per_s(config, scene, part, args.steps, 1)
            best_whole, best_split = max(whole), max(split)
            print(
                f"{name}: {config.batch_rays} rays per step, {torch.get_num_threads()} threads: one pass"
                f" {best_whole:,.0f} samples/s, {args.micro_batches} micro-batches of {part} rays"
                f" {best_split:,.0f} samples/s, overhead {100 * (1 - best_split / best_whole):+.1f}%"
            )


if __name__ == "__main__":
    main()
