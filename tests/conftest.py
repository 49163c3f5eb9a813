import contextlib
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configs  # noqa: E402
from builtin_scene import write_builtin_scene  # noqa: E402

torch.set_num_threads(2)
# The command-line flags of a model small enough to train a step in milliseconds (the commands tests run).
TINY_MODEL_FLAGS = ["--depth", "2", "--width", "32", "--n-coarse", "8", "--n-fine", "8"]


def tiny_command(script: str, config, *extra: str) -> list[str]:
    """A quick-preset run of an experiment script on a tiny model, config's scene and --out, without W&B."""
    root = Path(__file__).resolve().parents[1]
    return [
        sys.executable,
        str(root / script),
        "--quick",
        "--data",
        config.data,
        "--out",
        config.out,
        *TINY_MODEL_FLAGS,
        "--batch-rays",
        "64",
        "--video-frames",
        "1",
        "--eval-views",
        "1",
        "--wandb",
        "disabled",
        *extra,
    ]


@pytest.fixture(scope="session")
def builtin_scene(tmp_path_factory) -> Path:
    """The built-in scene, generated once per test session outside the repository."""
    return write_builtin_scene(tmp_path_factory.mktemp("data") / "builtin.npz")


@pytest.fixture
def tiny_config(builtin_scene, tmp_path):
    """A config small enough to train in seconds on the CPU, on the built-in scene, writing into tmp_path."""
    return replace(
        configs.QUICK,
        data=str(builtin_scene),
        out=str(tmp_path / "runs"),
        wandb="disabled",
        depth=2,
        width=64,
        pos_freqs=6,
        use_viewdirs=True,
        n_coarse=16,
        n_fine=16,
        steps=40,
        batch_rays=256,
        log_every=10,
        eval_every=20,
        ckpt_every=20,
        video_frames=2,
        eval_views=1,
        compile="off",  # compiling costs ~30 s: one test does it
        occupancy_grid=False,  # the quick preset's grid has tests of its own (test_occupancy.py)
    )


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> Path:
    """A folder with a NeRF and a BitNeRF run, each trained for 10 steps on a small random scene (one 16x16 test
    view)."""
    import train

    root = tmp_path_factory.mktemp("trained")
    config = replace(
        configs.QUICK,
        data=str(write_scene(root / "scene.npz", n=6, size=16)),
        out=str(root / "runs"),
        wandb="disabled",
        depth=2,
        width=32,
        n_coarse=8,
        n_fine=8,
        steps=10,
        batch_rays=64,
        log_every=5,
        eval_every=5,
        ckpt_every=10,
        video_frames=1,
        eval_views=1,
        compile="off",
        occupancy_grid=False,
    )
    train.run(replace(config, name="nerf"))
    train.run(replace(config, name="bitnerf", model="bitnerf"))
    return root / "runs"


def write_scene(path: Path, n: int = 6, size: int = 8, **overrides) -> Path:
    """A small valid scene .npz (random images, cameras on a circle), with any key replaced."""
    from camera import pose_spherical

    rng = np.random.default_rng(0)
    arrays = {
        "images": rng.random((n, size, size, 3), dtype=np.float32),
        "poses": np.stack([pose_spherical(360.0 * i / n, -30.0, 4.0) for i in range(n)]),
        "focal": np.float32(size),
    }
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


@contextlib.contextmanager
def ddp_rank(rank: int, port: int, config, grad_compression: str = "none"):
    """This process as one of 2 gloo ranks on the CPU, set up as a run sets up: (model, optimization, this rank's
    sampler, the DDP-wrapped model); the process group ends on leaving."""
    import bitnerf
    import bitnerf_ddp
    from dataset import RaySampler, load_scene
    from step import Optimization

    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    ranks = bitnerf_ddp.init("cpu", distributed=True)
    try:
        scene = load_scene(config.data)
        torch.manual_seed(config.seed)
        model = bitnerf.build_model(config, scene, ranks.device)
        optimization = Optimization.build(config, model, ranks.device, None)
        sampler = RaySampler(
            scene,
            ranks.device,
            config.batch_rays,
            config.seed,
            config.jitter_per_ray,
            rank=ranks.rank,
            world_size=ranks.world_size,
        )
        yield model, optimization, sampler, bitnerf_ddp.wrap(model, ranks, grad_compression)
    finally:
        bitnerf_ddp.shutdown()
