"""Get the scenes the experiments train on: download the real data, or write the built-in scene.

The built-in scene needs no network: builtin_scene.py renders it.

    python data_setup.py [--scene {builtin,tiny_nerf,nerf_synthetic,all}] [--out DIR]

--scene defaults to tiny_nerf: tiny_nerf_data.npz, the data the seed code fetched.
"""

import http.client
import os
import shutil
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from builtin_scene import write_builtin_scene
from files import atomic_write
from utils import OneLineParser, UserError, exit_on_user_error

DATA_DIR = Path(__file__).resolve().parent / "data"
# Where the experiments find the built-in scene without --data (dataset.py writes it here on first use).
BUILTIN_SCENE = DATA_DIR / "builtin.npz"

TINY_NERF_URL = "http://cseweb.ucsd.edu/~viscomp/projects/LF/papers/ECCV20/nerf/tiny_nerf_data.npz"
NERF_SYNTHETIC_DRIVE_ID = "18JxhpWD-4ZmuFKLzKlAw-w5PpzZxXOcG"
NERF_SYNTHETIC_DRIVE_LINK = f"https://drive.google.com/file/d/{NERF_SYNTHETIC_DRIVE_ID}/view"
DOWNLOAD_TIMEOUT_S = 30

# ---------------------------------------------------------------------------------------------
# Real data downloads
# ---------------------------------------------------------------------------------------------


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (gdown's span several), for a one-line UserError."""
    return " ".join(str(error).split())


def _make_dest_dir(dest_dir: Path) -> bool:
    """Create dest_dir if needed; returns whether it was created here (so a failure can remove it)."""
    existed = dest_dir.is_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    return not existed


def _remove_if_created_and_empty(dest_dir: Path, created: bool) -> None:
    if created and dest_dir.is_dir() and not any(dest_dir.iterdir()):
        dest_dir.rmdir()


def download_tiny_nerf(dest_dir=DATA_DIR) -> Path:
    """Download tiny_nerf_data.npz (the lego scene, 106 views at 100x100) into dest_dir; returns its path.

    Does nothing if the file is already there. A failed download raises UserError and leaves nothing
    behind; a dest_dir that cannot be written raises OSError.
    """
    dest_dir = Path(dest_dir)
    target = dest_dir / "tiny_nerf_data.npz"
    if target.is_file():
        return target
    url = TINY_NERF_URL

    def failed(reason: str) -> UserError:
        return UserError(
            f"could not download {url} ({reason}); download it by hand (e.g. in a browser) and "
            f"save it as {target}, or use the built-in scene, which needs no network "
            f"(python data_setup.py --scene builtin, or run the experiments without --data)"
        )

    def fetch(temp_path):
        """Stream url into temp_path with a progress bar and check that it is the whole scene."""
        # Every failure is raised in here, so that atomic_write removes temp_path.
        try:
            with open(temp_path, "wb") as f, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                expected_bytes = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=expected_bytes, unit="B", unit_scale=True, desc=target.name) as progress:
                    while block := response.read(1 << 20):
                        f.write(block)
                        progress.update(len(block))
            size = os.path.getsize(temp_path)
            if expected_bytes is not None and size != expected_bytes:
                raise failed(f"got {size} of {expected_bytes} bytes")
            with np.load(temp_path) as scene:  # a proxy's error page would pass the size check, not this
                missing = {"images", "poses", "focal"} - set(scene.files)
        except (OSError, http.client.HTTPException, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise failed(_one_line(e)) from e
        if missing:
            raise failed(f"the file lacks {sorted(missing)}")

    created = _make_dest_dir(dest_dir)
    try:
        atomic_write(target, fetch)
    finally:
        _remove_if_created_and_empty(dest_dir, created)
    return target


def download_nerf_synthetic(dest_dir=DATA_DIR) -> Path:
    """Download and unzip the Blender scenes (nerf_synthetic.zip, large) from Google Drive with gdown.

    Returns dest_dir/nerf_synthetic (one folder per scene, e.g. lego/ with transforms_*.json).
    Does nothing if that folder is already there. Raises UserError (and leaves nothing behind) on
    failure: the zip is downloaded and unpacked in a staging folder that is always removed.
    """
    dest_dir = Path(dest_dir)
    target = dest_dir / "nerf_synthetic"
    if target.is_dir():
        return target
    by_hand = (
        f"download nerf_synthetic.zip by hand from {NERF_SYNTHETIC_DRIVE_LINK} and unzip it "
        f"so that {target}/lego/transforms_train.json exists"
    )
    try:
        import gdown
    except ImportError as e:
        raise UserError(f"gdown is not installed (pip install gdown), or {by_hand}") from e
    created = _make_dest_dir(dest_dir)
    staging = Path(tempfile.mkdtemp(dir=dest_dir, prefix=".nerf_synthetic.download-"))
    try:
        zip_path = staging / "nerf_synthetic.zip"
        try:
            result = gdown.download(
                id=NERF_SYNTHETIC_DRIVE_ID, output=str(zip_path), quiet=False, timeout=DOWNLOAD_TIMEOUT_S
            )
        except Exception as e:  # gdown raises requests', its own and OS errors alike: all mean "no file"
            raise UserError(
                f"could not download nerf_synthetic.zip from Google Drive ({_one_line(e)}); {by_hand}"
            ) from e
        if result is None or not zip_path.is_file():
            raise UserError(f"could not download nerf_synthetic.zip from Google Drive; {by_hand}")
        try:
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(staging)
        except (zipfile.BadZipFile, OSError) as e:
            raise UserError(f"could not unzip the downloaded nerf_synthetic.zip ({_one_line(e)}); {by_hand}") from e
        unpacked = staging / "nerf_synthetic"
        if not unpacked.is_dir():
            raise UserError(f"the downloaded nerf_synthetic.zip has no nerf_synthetic/ folder; {by_hand}")
        # A rename within dest_dir: target appears whole or not at all.
        try:
            os.replace(unpacked, target)
        except OSError:
            if not target.is_dir():  # else a concurrent run put its (complete) folder there first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_created_and_empty(dest_dir, created)
    return target


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    parser = OneLineParser(description="Download the real NeRF data or write the built-in scene.")
    parser.add_argument(
        "--scene",
        default="tiny_nerf",
        choices=["builtin", "tiny_nerf", "nerf_synthetic", "all"],
        help="what to get: the built-in procedural scene (no network), tiny_nerf_data.npz "
        "(the default), the Blender nerf_synthetic scenes, or all three",
    )
    parser.add_argument("--out", type=Path, default=DATA_DIR, help=f"folder to write into (default {DATA_DIR})")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        try:
            if args.scene in ("builtin", "all"):
                print(f"wrote {write_builtin_scene(args.out / BUILTIN_SCENE.name)}")
            # The downloads skip what is already there, hence "ready" rather than "wrote".
            if args.scene in ("tiny_nerf", "all"):
                print(f"ready: {download_tiny_nerf(args.out)}")
            if args.scene in ("nerf_synthetic", "all"):
                print(f"ready: {download_nerf_synthetic(args.out)}")
        except OSError as e:  # the downloads report their own failures: this is writing into --out
            raise UserError(
                f"could not write into {args.out} ({_one_line(e)}); give --out a folder you can write to"
            ) from e


if __name__ == "__main__":
    main()
