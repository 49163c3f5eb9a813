import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import configs  # noqa: E402
import data_setup  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def builtin_scene(tmp_path_factory) -> Path:
    """The built-in scene, generated once per test session outside the repository."""
    return data_setup.write_builtin_scene(tmp_path_factory.mktemp("data") / "builtin.npz")


@pytest.fixture
def tiny_config(builtin_scene, tmp_path):
    """A config small enough to train in seconds on the CPU, on the built-in scene, writing into tmp_path."""
    return replace(
        configs.QUICK, data=str(builtin_scene), out=str(tmp_path / "runs"), wandb="disabled",
        depth=2, width=64, pos_freqs=6, use_viewdirs=True, n_coarse=16, n_fine=16, steps=40, batch_rays=256, log_every=10, eval_every=20,
        ckpt_every=20, video_frames=2, eval_views=1,
    )


def write_scene(path: Path, n: int = 6, size: int = 8, **overrides) -> Path:
    """A small valid scene .npz (random images, cameras on a circle), with any key replaced."""
    from utils import pose_spherical

    rng = np.random.default_rng(0)
    arrays = {
        "images": rng.random((n, size, size, 3), dtype=np.float32),
        "poses": np.stack([pose_spherical(360.0 * i / n, -30.0, 4.0) for i in range(n)]),
        "focal": np.float32(size),
    }
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path
