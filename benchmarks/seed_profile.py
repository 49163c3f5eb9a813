"""Where the time of a training step goes, ours (step.train_step) against the seed's pipeline (bench.SeedPipeline:
a whole image's encoded samples per step): user and system CPU time per sample (getrusage) and torch.profiler's
table of the ops, and the CPU time the seed's DataLoader worker spends per image. Its result is the profile in
docs/history/2026-11-25-bench-under-load.md, which docs/performance.md, "Measured: the quiet run", sums up. One
thread, as it was measured:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/seed_profile.py --data ../shared/data/lego_100.npz

Prints, per pipeline, the CPU time per sample and the profiler's top ops.
"""

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import bench  # noqa: E402
import precision  # noqa: E402
from benchmarks.common import CPU, add_common_flags, add_counts, config_of, parse, training  # noqa: E402
from dataset import load_scene  # noqa: E402
from utils import exit_on_user_error  # noqa: E402


def cpu_per_sample(step, steps: int, samples_per_step: int, warmup: int, rows: int) -> dict:
    """User and system CPU µs per sample of `steps` calls of step(i) after `warmup` untimed ones, under
    torch.profiler, whose table of the top `rows` ops by self CPU time comes with them."""
    for i in range(warmup):
        step(i)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with torch.profiler.profile() as prof:
        for i in range(steps):
            step(i)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    samples = steps * samples_per_step
    return {
        "user_us": 1e6 * (after.ru_utime - before.ru_utime) / samples,
        "system_us": 1e6 * (after.ru_stime - before.ru_stime) / samples,
        "wall_us": 1e6 * wall / samples,
        "table": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_flags(parser)
    parser.add_argument("--experiment", default="exp1", help="whose model and step (default exp1)")
    add_counts(
        parser,
        {
            "steps": (20, 2, "our training steps profiled"),
            "seed-steps": (2, 1, "the seed pipeline's steps profiled"),
            "warmup": (3, 1, "untimed steps before each"),
        },
    )
    parser.add_argument("--rows", type=int, default=8, help="ops in each profiler table (default 8)")
    args = parse(parser, argv)
    with exit_on_user_error():
        scene = load_scene(args.data)
        config = config_of(args.experiment, args.full, args.tiny)
        ours = training(config, scene)
        seed = bench.SeedPipeline(config, scene, CPU, precision.amp_dtype(config, CPU))
        start = time.process_time()
        items = [seed.views[i] for i in range(max(args.warmup, args.seed_steps))]  # what its worker does per image
        worker_ms = 1e3 * (time.process_time() - start) / len(items)
        print(f"seed worker: {worker_ms:.0f} ms CPU per image")
        pipelines = {
            f"ours, {config.name} ({args.steps} steps)": (
                ours.step,
                args.steps,
                config.batch_rays * config.samples_per_ray,
            ),
            f"seed pipeline, main process ({args.seed_steps} steps)": (
                lambda i: seed.step(items[i % len(items)]),
                args.seed_steps,
                seed.samples_per_step,
            ),
        }
        results = {}
        for name, (step, steps, samples) in pipelines.items():
            results[name] = cpu_per_sample(step, steps, samples, args.warmup, args.rows)
            print(
                f"{name}: {results[name]['user_us']:.1f} µs user and {results[name]['system_us']:.1f} µs system"
                f" CPU time, {results[name]['wall_us']:.1f} µs wall per sample under the profiler"
            )
            print(results[name]["table"])
    return {"seed_worker_ms": worker_ms, **results}


if __name__ == "__main__":
    main()
