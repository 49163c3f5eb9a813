"""What torch.compile buys a training step on this machine: samples/s of the eager step and of the step with its
radiance fields compiled (as train.py compiles them: `field.compile(fullgraph=True)`), after warm-up steps whose
time (the compilation) is printed apart. Its result is in docs/performance.md, "torch.compile on the CPU", and
is why `--compile auto` compiles BitNeRF's fields and fp8 training's, not NeRF's. Run it on a quiet machine:

    .venv/bin/python benchmarks/compile_speed.py exp4 exp1 exp2 --data ../shared/data/lego_100.npz

Prints one line per experiment: eager and compiled ms per step and samples/s, and the compiled warm-up's time.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configs  # noqa: E402
from benchmarks.common import add_common_flags, add_counts, config_of, parse, training  # noqa: E402
from dataset import load_scene  # noqa: E402
from utils import exit_on_user_error  # noqa: E402


def seconds_per_step(run, compiled: bool, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds of the `warmup` untimed steps, seconds per step of the `steps` after them) of run, its fields
    compiled first where `compiled`."""
    if compiled:
        for field in (run.model.coarse, run.model.fine):
            if field is not None:
                field.compile(fullgraph=True)
    start = time.perf_counter()
    for i in range(warmup):
        run.step(i)
    warmed = time.perf_counter()
    for i in range(warmup, warmup + steps):
        run.step(i)
    return warmed - start, (time.perf_counter() - warmed) / steps


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_flags(parser)
    parser.add_argument("experiments", nargs="+", choices=list(configs.AXES))
    add_counts(parser, {"warmup": (3, 1, "untimed steps first, the compilation's"), "steps": (40, 1, "timed steps")})
    args = parse(parser, argv)
    results = {}
    with exit_on_user_error():
        scene = load_scene(args.data)
        for name in args.experiments:
            config = config_of(name, args.full, args.tiny)
            samples = config.batch_rays * config.samples_per_ray
            (_, eager), (compile_s, compiled) = (
                seconds_per_step(training(config, scene), compiled, args.warmup, args.steps)
                for compiled in (False, True)
            )
            results[name] = {"eager_s": eager, "compiled_s": compiled, "compile_s": compile_s}
            print(
                f"{name}: {config.batch_rays} rays per step, eager {1e3 * eager:.1f} ms ({samples / eager:,.0f}"
                f" samples/s), compiled {1e3 * compiled:.1f} ms ({samples / compiled:,.0f} samples/s) after"
                f" {args.warmup} warm-up steps of {compile_s:.0f} s"
            )
    return results


if __name__ == "__main__":
    main()
