"""How far the memory plan's count (ray_memory.counted_bytes_per_ray: the bytes autograd saves per training ray) is
from what a training step really grows by per ray on the CPU: the peak resident set (`ru_maxrss`) of a fresh
process after one training step of a few rays and of many, less each other, per ray. Memory, not a timing. Its
result is the margin table in docs/gpus.md, "Memory and micro-batches":

    .venv/bin/python benchmarks/memory_per_ray.py                 # the full configuration, 512 and 2048 rays

Prints one line per experiment and autocast dtype: counted bytes per ray, measured growth per ray, their ratio.
"""

import argparse
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import precision  # noqa: E402
import ray_memory  # noqa: E402
from benchmarks.common import CPU, add_common_flags, config_of, training  # noqa: E402
from dataset import load_scene  # noqa: E402
from utils import exit_on_user_error  # noqa: E402

# Each case: an experiment and the autocast dtype its step runs in (fp32: none).
CASES = ("exp1:fp32", "exp1:bf16", "exp1:fp16", "exp4:fp32")


def case_config(case: str, full: bool, tiny: bool, rays: int):
    """The configuration of case "experiment:dtype" with `rays` rays per step."""
    name, dtype = case.split(":")
    autocast = dict(precision="fp32") if dtype == "fp32" else dict(precision="amp", amp_dtype=dtype)
    return config_of(name, full, tiny, batch_rays=rays, **autocast)


def peak_rss_after_one_step(case: str, rays: int, args: argparse.Namespace) -> int:
    """The peak resident set, in bytes, of a fresh process that trained one step of `rays` rays of case."""
    command = [
        sys.executable,
        __file__,
        "--child",
        case,
        str(rays),
        *(["--data", args.data] if args.data else []),
        *(["--quick"] if not args.full else []),
        *(["--tiny"] if args.tiny else []),
    ]
    return int(subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()[-1])


def child(case: str, rays: int, args: argparse.Namespace) -> None:
    """In the fresh process: one training step, then print the peak resident set in bytes (ru_maxrss is KiB)."""
    config = case_config(case, args.full, args.tiny, rays)
    training(config, load_scene(args.data)).step(0)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_flags(parser, full=True)
    parser.add_argument(
        "--cases",
        nargs="+",
        default=list(CASES),
        help=f"experiment:dtype (fp32, bf16, fp16) pairs (default {' '.join(CASES)})",
    )
    parser.add_argument("--rays", nargs=2, type=int, default=[512, 2048], help="the two step sizes (default 512 2048)")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "RAYS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child[0], int(args.child[1]), args)
    if args.tiny:
        args.cases, args.rays = args.cases[:1], [32, 256]
    results = {}
    with exit_on_user_error():
        scene = load_scene(args.data)
        for case in args.cases:
            config = case_config(case, args.full, args.tiny, args.rays[0])
            counted = ray_memory.counted_bytes_per_ray(config, scene, precision.amp_dtype(config, CPU))[0]
            small, large = (peak_rss_after_one_step(case, rays, args) for rays in args.rays)
            measured = (large - small) / (args.rays[1] - args.rays[0])
            results[case] = {"counted": counted, "measured": measured, "ratio": measured / counted}
            print(
                f"{case}: counted {counted / 1e6:.2f} MB saved per ray, measured growth {measured / 1e6:.2f} MB"
                f" per ray, ratio {measured / counted:.2f}"
            )
    return results


if __name__ == "__main__":
    main()
