"""The mapper's toolchain here: AccelForge and hwcomponents installed, CACTI and NeuroSim runnable (rebuilt where the
shipped binaries are not), graphviz's dot on the PATH; each missing piece is one line that says what to do."""

import shutil
import subprocess
import sys
from pathlib import Path

from utils import UserError

ACCELFORGE_REQUIREMENT = "accelforge==1.0.467"  # as requirements.txt pins it


def toolchain_missing(error: ImportError) -> str:
    """What to do when AccelForge or hwcomponents cannot be imported, in one line."""
    version = ".".join(map(str, sys.version_info[:2]))
    if sys.version_info[:2] < (3, 12):
        return (
            f"hw_eval.py needs Python >= 3.12 (AccelForge's hwcomponents require it; this is Python {version}):"
            f" run it with Python 3.12+ after pip install {ACCELFORGE_REQUIREMENT}; training and report.py"
            f" work here"
        )
    return f"hw_eval.py needs AccelForge and hwcomponents ({error}): pip install {ACCELFORGE_REQUIREMENT}"


def cacti_dir() -> Path:
    import hwcomponents_cacti

    return Path(hwcomponents_cacti.__file__).parent / "cacti"


def neurosim_dir() -> Path:
    import hwcomponents_neurosim

    return Path(hwcomponents_neurosim.__file__).parent


def starts(binary: Path, banner: str) -> bool:
    """Whether a shipped binary starts here: without arguments a working one prints its banner, one built for a
    newer glibc (the shipped CACTI and NeuroSim need 2.38: Debian 12 and Ubuntu 22.04 lack it) a loader error."""
    if not binary.is_file():
        return False
    result = subprocess.run([str(binary)], capture_output=True, text=True, cwd=binary.parent)
    return banner in result.stdout + result.stderr


def cacti_runs() -> bool:
    return starts(cacti_dir() / "cacti", "CACTI")


def neurosim_runs() -> bool:
    """NeuroSim: the compute-in-memory designs' arrays, drivers and ADCs (hwcomponents_neurosim)."""
    return starts(neurosim_dir() / "NeuroSim" / "main", "Neurosim")


def rebuild(name: str, directory: Path, command: str, runs) -> None:
    """Rebuild a model's binary with `command` in `directory` unless it runs (idempotent)."""
    if runs():
        print(f"{name} runs")
        return
    if not (shutil.which("make") and shutil.which("g++")):
        raise UserError(f"{name} must be rebuilt here, which needs make and g++ (apt-get install build-essential)")
    print(f"rebuilding {name} in {directory} (under a minute) ...")
    build = subprocess.run(command, shell=True, cwd=directory, capture_output=True, text=True)
    if build.returncode != 0 or not runs():
        last_line = (build.stderr or build.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"rebuilding {name} in {directory} failed: {last_line[0]}")
    print(f"{name} rebuilt and runs")


# NeuroSim's sources ship beside its binary: DNN_NeuroSim_V1.3's NeuroSIM with hwcomponents_neurosim's drop_in
# files over them, built as the package's NeuroSim/main.
NEUROSIM_BUILD = (
    "rm -rf NeuroSim/build && cp -r DNN_NeuroSim_V1.3/Inference_pytorch/NeuroSIM NeuroSim/build && "
    "cp drop_in/* NeuroSim/build/ && make -C NeuroSim/build main && cp NeuroSim/build/main NeuroSim/main"
)


def setup() -> None:
    """Rebuild CACTI and NeuroSim from the sources shipped beside them where the binaries do not run (idempotent),
    check for dot."""
    rebuild("CACTI", cacti_dir(), "make clean && make opt", cacti_runs)
    rebuild("NeuroSim", neurosim_dir(), NEUROSIM_BUILD, neurosim_runs)
    check_dot()


def check_dot() -> None:
    if shutil.which("dot") is None:
        raise UserError(
            "the AccelForge mapper needs graphviz's `dot` on the PATH: install the graphviz package "
            "(make setup does, as root; else: sudo apt-get install graphviz)"
        )


def check_toolchain() -> None:
    """Fail with one line before mapping, not with a traceback from inside the mapper."""
    try:
        import accelforge  # noqa: F401
    except ImportError as e:
        raise UserError(toolchain_missing(e)) from None
    for name, runs in (("CACTI", cacti_runs), ("NeuroSim", neurosim_runs)):
        if not runs():
            raise UserError(f"{name} does not run on this machine: run `python hw_eval.py --setup` (or make setup)")
    check_dot()
