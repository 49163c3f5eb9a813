"""Choose settings on validation views: train one experiment with each candidate's flags on each scene and
print the candidates' validation PSNR side by side, best first.

    python sweep.py exp4 --data builtin --data ../lego_100.npz --val-views 8 --jobs 2 \\
        --candidate plain= --candidate "lr2x=--lr 1e-2 --lr-final 5e-4"

Each run is `python EXPERIMENT.py --quick --val-views N <candidate's flags>` in OUT/SCENE/CANDIDATE: N of
the scene's training views are held out (dataset.with_validation) and summary.json's psnr_val, over all of
them, is what the table ranks by; test views are never looked at. --jobs runs that many trainings side by
side, one thread each: their PSNRs are as a lone run's, their wall times are not (the table leaves them
out). A finished run (its summary.json present) is read, not trained again, so a sweep can be extended.
"""

import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

import configs
from files import read_json
from utils import OneLineParser, UserError, exit_on_user_error

BUILTIN = "builtin"  # --data value of the built-in scene


def parse_candidate(text: str) -> tuple[str, list[str]]:
    name, separator, flags = text.partition("=")
    if not separator or not name or "/" in name:
        raise UserError(f'--candidate {text!r}: give NAME=FLAGS, such as "lr2x=--lr 1e-2" (FLAGS may be empty)')
    return name, shlex.split(flags)


def scene_label(data: str) -> str:
    return BUILTIN if data == BUILTIN else Path(data).stem


def run_command(experiment: str, data: str, val_views: int, flags: list[str], run_dir: Path) -> list[str]:
    scene = [] if data == BUILTIN else ["--data", str(Path(data).resolve())]
    return [
        sys.executable,
        f"{experiment}.py",
        "--quick",
        *scene,
        "--val-views",
        str(val_views),
        "--wandb",
        "disabled",
        "--video-frames",
        "1",
        "--out",
        str(run_dir.parent),
        "--name",
        run_dir.name,
        "--overwrite",
        *flags,
    ]


def train(command: list[str], run_dir: Path, threads: int) -> dict:
    if not (run_dir / "summary.json").exists():
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        log = run_dir.parent / f"{run_dir.name}.log"
        with open(log, "w") as f:
            done = subprocess.run(
                command,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).parent,
                env={**os.environ, "OMP_NUM_THREADS": str(threads)},
            )
        if done.returncode:
            raise UserError(f"{shlex.join(command)} failed with exit code {done.returncode}; see {log}")
    return read_json(run_dir / "summary.json")


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="sweep.py", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=[n for n in configs.AXES if not configs.experiment(n).distributed])
    parser.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="SCENE",
        help=f"a scene (.npz or Blender folder), or {BUILTIN!r}; repeat for several",
    )
    parser.add_argument(
        "--val-views",
        type=int,
        default=8,
        metavar="N",
        help="training views held out for validation in scenes without their own (default 8)",
    )
    parser.add_argument(
        "--candidate",
        action="append",
        type=parse_candidate,
        required=True,
        metavar="NAME=FLAGS",
        help="a candidate: its name and the flags it adds to EXPERIMENT.py --quick; repeat",
    )
    parser.add_argument("--jobs", type=int, default=1, help="trainings side by side, one thread each (default 1)")
    parser.add_argument("--out", default="runs/sweep", help="where the runs go (default runs/sweep)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    names = [name for name, _ in args.candidate]
    if len(set(names)) != len(names):
        raise UserError(f"candidate names must differ, got {', '.join(names)}")
    out = Path(args.out) / args.experiment
    threads = 1 if args.jobs > 1 else (os.cpu_count() or 1)
    tasks = [
        (name, flags, data, out / scene_label(data) / name) for name, flags in args.candidate for data in args.data
    ]
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [
            pool.submit(train, run_command(args.experiment, data, args.val_views, flags, run_dir), run_dir, threads)
            for _, flags, data, run_dir in tasks
        ]
        summaries = [future.result() for future in tqdm(futures, desc="sweep", unit="run")]
    results = {(name, data): summary for (name, _, data, _), summary in zip(tasks, summaries)}
    mean_val = {name: sum(results[name, data]["psnr_val"] for data in args.data) / len(args.data) for name in names}
    scenes = [scene_label(data) for data in args.data]
    print(f"| candidate | flags | {' | '.join(f'{s} val PSNR (dB)' for s in scenes)} | mean | model file |")
    print("|" + "---|" * (len(scenes) + 4))
    for name in sorted(names, key=lambda n: -mean_val[n]):
        flags = shlex.join(dict(args.candidate)[name]) or "(none)"
        cells = [f"{results[name, data]['psnr_val']:.2f}" for data in args.data]
        size = results[name, args.data[0]]["model_bytes"] / 1e3
        print(f"| {name} | `{flags}` | {' | '.join(cells)} | {mean_val[name]:.2f} | {size:.0f} kB |")


if __name__ == "__main__":
    with exit_on_user_error():
        main()
