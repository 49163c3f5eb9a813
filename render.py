"""Render a trained run again, without training: its test views with their metrics, depth maps and the
360° video, from the training checkpoint or from the deployable weights file.

`python render.py runs/exp1` renders every test view of the run's scene into `runs/exp1/rerender/`
(renders/rgb_*.png, gt_*.png, depth_*.png, video.gif, metrics.json) and prints test PSNR and SSIM (and
the depth error where the scene has ground-truth depth). `--weights model` renders from `model.pt`
(BitNeRF: the packed ternary `model_ternary.pt`) instead of `checkpoint.pt`, which shows that what
training exports is what it evaluated. `--downscale N` renders at 1/N resolution (the ground truth
averaged over N×N pixels), `--views 0,5` picks test views, `--video-frames N` sets the orbit's length.
"""

import dataclasses
from pathlib import Path

import torch

import rundir
from dataset import Scene, downscaled
from devices import resolve_device
from evaluation import Evaluation
from files import write_json
from utils import OneLineParser, UserError, exit_on_user_error

WEIGHTS = ("checkpoint", "model")


def parse_views(text: str | None, scene: Scene) -> list[int]:
    if text is None:
        return [int(v) for v in scene.i_test]
    try:
        views = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        views = []
    unknown = [v for v in views if v not in set(scene.i_test.tolist())]
    if not views or unknown:
        raise UserError(
            f"--views takes a comma-separated list of the scene's test views "
            f"({', '.join(map(str, scene.i_test))}), got {text!r}"
        )
    return views


def render_run(
    run_dir: Path,
    out: Path,
    weights: str = "checkpoint",
    data: str | None = None,
    device: torch.device = torch.device("cpu"),
    views: str | None = None,
    downscale: int = 1,
    video_frames: int | None = None,
) -> dict:
    """Render the run into out; returns the metrics it also writes to out/metrics.json."""
    config, scene, model = rundir.load_trained(run_dir, data, device)
    if weights == "model":
        model = rundir.load_model_file(run_dir, config, scene, device)
    if video_frames is not None:
        config = dataclasses.replace(config, video_frames=video_frames)
    scene = downscaled(scene, downscale)
    out.mkdir(parents=True, exist_ok=True)
    evaluation = Evaluation.of(config, scene, device, out)
    results = evaluation.test_views(model, parse_views(views, scene))
    evaluation.write_test_views(results)
    evaluation.video(model)
    metrics = {
        "run": str(run_dir),
        "weights": weights,
        "views": [r["view"] for r in results],
        "width": scene.width,
        "height": scene.height,
        **evaluation.metrics(results),
    }
    write_json(out / "metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="render.py", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run directory, e.g. runs/exp1")
    parser.add_argument("--out", type=Path, help="where the renders go (default: RUN_DIR/rerender)")
    parser.add_argument(
        "--weights",
        choices=WEIGHTS,
        default="checkpoint",
        help="render from checkpoint.pt or from the deployable model file (default: checkpoint)",
    )
    parser.add_argument("--data", help="the scene, if not where the run found it")
    parser.add_argument("--views", help="comma-separated test views (default: every test view)")
    parser.add_argument("--downscale", type=int, default=1, help="render at 1/N resolution (default 1)")
    parser.add_argument("--video-frames", type=int, help="frames of the 360° video (default: the run's)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    with exit_on_user_error():
        args = parser.parse_args(argv)
        if args.downscale < 1:
            raise UserError(f"--downscale must be at least 1, got {args.downscale}")
        if args.video_frames is not None and args.video_frames < 1:
            raise UserError(f"--video-frames must be at least 1, got {args.video_frames}")
        out = args.out or args.run_dir / "rerender"
        metrics = render_run(
            args.run_dir,
            out,
            args.weights,
            args.data,
            resolve_device(args.device),
            args.views,
            args.downscale,
            args.video_frames,
        )
    depth = f", depth error {metrics['depth_abs_error_test']:.4f}" if "depth_abs_error_test" in metrics else ""
    print(
        f"{args.run_dir} ({args.weights}): test PSNR {metrics['psnr_test']:.2f} dB, SSIM {metrics['ssim_test']:.3f}"
        f"{depth} over {len(metrics['views'])} views at {metrics['width']}x{metrics['height']} -> {out}"
    )


if __name__ == "__main__":
    main()
