"""The mapper's toolchain here: AccelForge and hwcomponents installed, CACTI runnable (rebuilt where the shipped
binary is not), graphviz's dot on the PATH; each missing piece is one line that says what to do."""

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
        return (f"hw_eval.py needs Python >= 3.12 (AccelForge's hwcomponents require it; this is Python {version}):"
                f" run it with Python 3.12+ after pip install {ACCELFORGE_REQUIREMENT}; training and report.py"
                f" work here")
    return f"hw_eval.py needs AccelForge and hwcomponents ({error}): pip install {ACCELFORGE_REQUIREMENT}"


def cacti_dir() -> Path:
    import hwcomponents_cacti

    return Path(hwcomponents_cacti.__file__).parent / "cacti"


def cacti_runs() -> bool:
    """Whether the CACTI binary starts here (the shipped one needs glibc 2.38: Debian 12 and Ubuntu 22.04 lack it)."""
    binary = cacti_dir() / "cacti"
    if not binary.is_file():
        return False
    # Without arguments a working CACTI prints its usage ("how to use CACTI"); a broken one a loader error.
    result = subprocess.run([str(binary)], capture_output=True, text=True)
    return "CACTI" in result.stdout + result.stderr


def setup() -> None:
    """Rebuild CACTI from the sources shipped beside it when the binary does not run (idempotent), check for dot."""
    if cacti_runs():
        print(f"CACTI runs: {cacti_dir() / 'cacti'}")
    else:
        if not (shutil.which("make") and shutil.which("g++")):
            raise UserError("CACTI must be rebuilt here, which needs make and g++ (apt-get install build-essential)")
        print(f"rebuilding CACTI in {cacti_dir()} (about 20 s) ...")
        build = subprocess.run("make clean && make opt", shell=True, cwd=cacti_dir(), capture_output=True, text=True)
        if build.returncode != 0 or not cacti_runs():
            last_line = (build.stderr or build.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"rebuilding CACTI in {cacti_dir()} failed: {last_line[0]}")
        print("CACTI rebuilt and runs")
    check_dot()


def check_dot() -> None:
    if shutil.which("dot") is None:
        raise UserError("the AccelForge mapper needs graphviz's `dot` on the PATH: install the graphviz package "
                        "(make setup does, as root; else: sudo apt-get install graphviz)")


def check_toolchain() -> None:
    """Fail with one line before mapping, not with a traceback from inside the mapper."""
    try:
        import accelforge  # noqa: F401
    except ImportError as e:
        raise UserError(toolchain_missing(e)) from None
    if not cacti_runs():
        raise UserError("CACTI does not run on this machine: run `python hw_eval.py --setup` (or make setup)")
    check_dot()
