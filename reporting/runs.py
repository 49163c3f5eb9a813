"""The runs a report covers: the runs of each experiment (its seeds), and each experiment of the suite
without a finished run, with why."""

import re
from pathlib import Path

import configs
import rundir
from files import read_json
from utils import UserError

# In --runs: {experiment: why it failed} (its stderr's last line), which notebooks/colab.ipynb writes after training.
FAILED = "failed.json"


def experiment_groups(runs) -> dict[str, list[tuple[Path, dict]]]:
    """The runs of each experiment, in run order: the seeds of one experiment (--seeds) share its name."""
    groups = {}
    for run_dir, summary in runs:
        groups.setdefault(summary["experiment"], []).append((run_dir, summary))
    return groups


def missing_experiments(runs_dir: Path, runs) -> list[str]:
    """A Markdown item per experiment of the suite (configs.AXES) without a finished run, saying why."""
    path = runs_dir / FAILED
    failed = read_json(path) if path.is_file() else {}
    if not isinstance(failed, dict) or not all(isinstance(reason, str) for reason in failed.values()):
        raise UserError(f"{path}: expected an object of experiment names and reasons, as the notebook writes it")
    finished = {summary["experiment"] for _, summary in runs}
    items = []
    for name in configs.AXES:
        if name in finished:
            continue
        # The run directories it would have: NAME, or NAME-seedS for each seed of --seeds.
        dirs = sorted(d for d in runs_dir.iterdir() if d.is_dir() and re.fullmatch(rf"{name}(-seed\d+)?", d.name))
        if name in failed:
            why = failed[name]
        elif not dirs:
            why = "no run directory"
        elif any((d / rundir.CHECKPOINT).is_file() for d in dirs):
            why = (
                f"run directory {', '.join(d.name for d in dirs)} without {rundir.SUMMARY} (the run did not finish;"
                f" --resume continues it)"
            )
        else:
            why = (
                f"run directory {', '.join(d.name for d in dirs)} without {rundir.SUMMARY} or a checkpoint (the run"
                f" stopped before its first one; --overwrite trains it again)"
            )
        items.append(f"- {name}: {why}")
    return items
