"""Scenes (tiny-nerf .npz, Blender folders, the built-in scene), ray generation and ray batches."""

import dataclasses
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from camera import get_rays
from utils import UserError


@dataclass
class Scene:
    """Images (N, H, W, 3) in [0, 1], camera-to-world poses (N, 4, 4), pinhole focal length in pixels.

    Views split into i_train (trained on), i_test (the final evaluation) and i_val (validation views for
    the periodic evaluation during training; empty where the scene has none)."""

    name: str
    images: np.ndarray
    poses: np.ndarray
    focal: float
    i_train: np.ndarray
    i_test: np.ndarray
    near: float = 2.0
    far: float = 6.0
    white_bkgd: bool = False
    depths: np.ndarray | None = None
    aabb: np.ndarray | None = None  # (2, 3) lower and upper corner of a box known to hold the scene
    i_val: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def monitored_views(self) -> tuple[str, np.ndarray]:
        """The split the periodic evaluation renders, and its views: validation where the scene has it,
        else test (an .npz without i_val)."""
        return ("val", self.i_val) if self.i_val.size else ("test", self.i_test)

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]


def load_scene(path: str | None, downscale: int = 1, val_views: int = 0) -> Scene:
    """A scene from a tiny-nerf .npz, a Blender folder, or (path None) the built-in scene, with val_views of
    its training views held out for validation (with_validation) if it has no validation views of its own."""
    return with_validation(read_scene(path, downscale), val_views)


def read_scene(path: str | None, downscale: int) -> Scene:
    if path is None:
        import data_setup

        builtin = data_setup.BUILTIN_SCENE
        if not builtin.exists():
            data_setup.write_builtin_scene(builtin)
        return load_npz(builtin)
    p = Path(path)
    if p.is_dir():
        return load_blender(p, downscale)
    if not p.exists():
        raise UserError(
            f"no scene at {p}: give a tiny-nerf .npz or a Blender scene folder "
            f"(python data_setup.py --scene tiny_nerf fetches one)"
        )
    return load_npz(p)


def with_validation(scene: Scene, n: int) -> Scene:
    """The scene with n of its training views, evenly spaced over them, moved to i_val: validation views for
    the periodic evaluation and for choosing settings, for scenes that have none (tiny-nerf .npz files and
    the built-in scene), so that no choice is made on the test views."""
    if n == 0:
        return scene
    if scene.i_val.size:
        raise UserError(
            f"--val-views {n}: {scene.name} has {scene.i_val.size} validation views of its own; leave --val-views at 0"
        )
    if not 0 < n < len(scene.i_train):
        raise UserError(
            f"--val-views {n}: {scene.name} has {len(scene.i_train)} training views; hold out"
            f" between 1 and {len(scene.i_train) - 1}"
        )
    held_out = scene.i_train[np.linspace(0, len(scene.i_train) - 1, n).round().astype(np.int64)]
    return dataclasses.replace(scene, i_train=np.setdiff1d(scene.i_train, held_out), i_val=held_out)


def area_pool(images: np.ndarray, factor: int) -> np.ndarray:
    """Images (N, H, W, ...) as a camera of 1/factor the resolution sees them: each pixel the mean of a
    factor × factor block (a partial block at the right or bottom edge is dropped)."""
    if factor == 1:
        return images
    height, width = images.shape[1] // factor, images.shape[2] // factor
    cropped = images[:, : height * factor, : width * factor]
    return cropped.reshape(len(images), height, factor, width, factor, *images.shape[3:]).mean((2, 4))


def downscaled(scene: Scene, factor: int) -> Scene:
    """The scene seen by cameras of 1/factor the resolution: images and depths area-pooled, focal scaled."""
    if factor == 1:
        return scene
    if scene.height // factor < 1 or scene.width // factor < 1:
        raise UserError(f"--downscale {factor} leaves no pixels of a {scene.width}x{scene.height} scene")
    return dataclasses.replace(
        scene,
        images=area_pool(scene.images, factor),
        focal=scene.focal / factor,
        depths=None if scene.depths is None else area_pool(scene.depths, factor),
    )


def load_npz(path: Path) -> Scene:
    try:
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read {path} as a .npz scene ({e}); re-create or re-download it") from None
    missing = {"images", "poses", "focal"} - arrays.keys()
    if missing:
        raise UserError(f"{path} lacks {', '.join(sorted(missing))}: a scene .npz needs images, poses and focal")
    images = arrays["images"].astype(np.float32)
    n = images.shape[0] if images.ndim else 0
    i_val = np.asarray(arrays.get("i_val", []), dtype=np.int64).reshape(-1)
    if "i_train" in arrays or "i_test" in arrays:
        i_train = arrays.get("i_train", np.setdiff1d(np.arange(n), np.union1d(arrays.get("i_test", []), i_val)))
        i_test = arrays.get("i_test", np.setdiff1d(np.arange(n), np.union1d(i_train, i_val)))
    else:
        # Without a split, the first 90% of the views not in i_val train and the rest test, as the README documents.
        rest = np.setdiff1d(np.arange(n), i_val)
        n_train = max(1, min(len(rest) - 1, int(round(0.9 * len(rest)))))
        i_train, i_test = rest[:n_train], rest[n_train:]
    scene = Scene(
        name=path.stem,
        images=images,
        poses=arrays["poses"].astype(np.float32),
        focal=float(np.asarray(arrays["focal"]).reshape(-1)[0]) if np.asarray(arrays["focal"]).size else 0.0,
        i_train=np.asarray(i_train, dtype=np.int64),
        i_test=np.asarray(i_test, dtype=np.int64),
        near=float(arrays.get("near", 2.0)),
        far=float(arrays.get("far", 6.0)),
        white_bkgd=bool(arrays.get("white_bkgd", False)),
        depths=arrays["depths"].astype(np.float32) if "depths" in arrays else None,
        i_val=i_val,
    )
    validate_scene(scene, path)
    return scene


def load_blender(folder: Path, downscale: int = 1) -> Scene:
    """A nerf_synthetic scene: transforms_{train,val,test}.json and RGBA PNGs, composited on white.

    Train views train, val views validate (the periodic evaluation) and test views test, as in the
    original NeRF code.
    """
    images, poses, split_sizes, camera_angle_x = [], [], {}, None
    for split in ("train", "val", "test"):
        meta_path = folder / f"transforms_{split}.json"
        if not meta_path.exists():
            raise UserError(f"{folder} is not a Blender scene: {meta_path.name} is missing")
        try:
            meta = json.loads(meta_path.read_text())
            camera_angle_x = float(meta["camera_angle_x"])
            frames = meta["frames"]
            for frame in frames:
                rgba = iio.imread(folder / (frame["file_path"] + ".png")).astype(np.float32) / 255.0
                rgba = area_pool(rgba[None], downscale)[0]
                images.append(rgba[..., :3] * rgba[..., 3:4] + (1.0 - rgba[..., 3:4]))
                poses.append(np.asarray(frame["transform_matrix"], dtype=np.float32))
        except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
            raise UserError(f"cannot read the Blender scene in {folder} ({type(e).__name__}: {e})") from None
        split_sizes[split] = len(frames)
    width = images[0].shape[1]
    n_train, n_val = split_sizes["train"], split_sizes["val"]
    scene = Scene(
        name=folder.name,
        images=np.stack(images).astype(np.float32),
        poses=np.stack(poses),
        focal=0.5 * width / np.tan(0.5 * camera_angle_x),
        i_train=np.arange(n_train),
        i_val=np.arange(n_train, n_train + n_val),
        i_test=np.arange(n_train + n_val, n_train + n_val + split_sizes["test"]),
        near=2.0,
        far=6.0,
        white_bkgd=True,
        aabb=np.array([[-1.5] * 3, [1.5] * 3], dtype=np.float32),  # the nerf_synthetic objects' box, as nerfacc's
    )
    validate_scene(scene, folder)
    return scene


def scene_box(scene: Scene) -> np.ndarray:
    """(2, 3) the box an occupancy grid covers: the scene's own, else the smallest one holding every sample
    of every camera's rays, between near and far (the corners of each view frustum)."""
    if scene.aabb is not None:
        return scene.aabb
    half_width, half_height = 0.5 * scene.width / scene.focal, 0.5 * scene.height / scene.focal
    corners = np.array([[x, y, -1.0] for x in (-half_width, half_width) for y in (-half_height, half_height)])
    camera_points = np.concatenate([scene.near * corners, scene.far * corners])  # (8, 3)
    points = np.einsum("nij,kj->nki", scene.poses[:, :3, :3], camera_points) + scene.poses[:, None, :3, 3]
    return np.stack([points.min((0, 1)), points.max((0, 1))]).astype(np.float32)


def validate_scene(scene: Scene, source) -> None:
    """Every check a scene must pass before training, each failure one line naming the fix."""
    images, poses = scene.images, scene.poses
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] < 2:
        raise UserError(f"{source}: images must have shape (N>=2, H, W, 3), got {images.shape}")
    n = images.shape[0]
    if poses.shape != (n, 4, 4):
        raise UserError(f"{source}: poses must have shape ({n}, 4, 4) to match the images, got {poses.shape}")
    if not np.isfinite(images).all() or not np.isfinite(poses).all():
        raise UserError(f"{source}: images or poses contain NaN or infinity")
    if images.min() < 0.0 or images.max() > 1.0:
        raise UserError(
            f"{source}: image values must lie in [0, 1] (got [{images.min():.3g}, {images.max():.3g}]);"
            f" divide 8-bit images by 255"
        )
    if not np.isfinite(scene.focal) or scene.focal <= 0:
        raise UserError(f"{source}: focal must be a positive number of pixels, got {scene.focal}")
    if not 0 <= scene.near < scene.far or not np.isfinite(scene.far):
        raise UserError(f"{source}: need 0 <= near < far, got near={scene.near}, far={scene.far}")
    for key in ("i_train", "i_test"):
        idx = getattr(scene, key)
        if idx.ndim != 1 or idx.size == 0 or idx.min() < 0 or idx.max() >= n:
            raise UserError(f"{source}: {key} must be a non-empty list of view indices in [0, {n})")
    if scene.i_val.size and (scene.i_val.ndim != 1 or scene.i_val.min() < 0 or scene.i_val.max() >= n):
        raise UserError(f"{source}: i_val must be a list of view indices in [0, {n})")
    for key in ("i_test", "i_val"):
        shared = np.intersect1d(scene.i_train, getattr(scene, key))
        if shared.size:
            views = ", ".join(map(str, shared[:5])) + (", ..." if shared.size > 5 else "")
            raise UserError(
                f"{source}: i_train and {key} share {shared.size} views ({views}): a"
                f" {key.removeprefix('i_')} view must not be trained on; give disjoint splits"
            )
    if scene.depths is not None and scene.depths.shape != images.shape[:3]:
        raise UserError(f"{source}: depths must have shape {images.shape[:3]}, got {scene.depths.shape}")


@dataclass
class RayBatch:
    origins: torch.Tensor
    dirs: torch.Tensor
    rgb: torch.Tensor
    jitter: torch.Tensor | None  # per ray, where its samples fall within their bins (NeRF.forward)


class RaySampler:
    """All training rays, built once on the training device; random batches drawn per step.

    Batch `step` (its rays and their sample jitter) is a function of (seed, step) alone, drawn in full
    on every rank, and each rank keeps its contiguous share: the global stream of samples is the same
    for any world size, and resuming needs no sampler state. jitter_samples: uniforms per ray for
    NeRF.forward (n_coarse + n_fine), or 0 for deterministic samples.
    """

    def __init__(
        self,
        scene: Scene,
        device: torch.device,
        batch_rays: int,
        seed: int,
        jitter_samples: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_rays % world_size:
            raise UserError(f"batch_rays ({batch_rays}) must be divisible by the number of processes ({world_size})")
        poses = torch.from_numpy(scene.poses[scene.i_train]).to(device)
        rays = [get_rays(scene.height, scene.width, scene.focal, c2w) for c2w in poses]
        self.origins = torch.stack([o for o, _ in rays]).reshape(-1, 3)
        self.dirs = torch.stack([d for _, d in rays]).reshape(-1, 3)
        self.rgb = torch.from_numpy(scene.images[scene.i_train]).to(device).reshape(-1, 3)
        self.batch_rays, self.seed, self.jitter_samples = batch_rays, seed, jitter_samples
        self.share = slice(rank * batch_rays // world_size, (rank + 1) * batch_rays // world_size)
        self.generator = torch.Generator(device=device)

    def batch(self, step: int) -> RayBatch:
        self.generator.manual_seed(self.seed * 1_000_003 + step)
        device = self.generator.device
        index = torch.randint(self.origins.shape[0], (self.batch_rays,), generator=self.generator, device=device)
        index = index[self.share]
        jitter = None
        if self.jitter_samples:
            jitter = torch.rand(self.batch_rays, self.jitter_samples, generator=self.generator, device=device)
            jitter = jitter[self.share]
        return RayBatch(self.origins[index], self.dirs[index], self.rgb[index], jitter)
