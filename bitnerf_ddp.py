"""Data-parallel training of NeRF and BitNeRF: the process group, DDP wrapping, and self-launch.

`python exp5.py` relaunches itself under torchrun (one process per visible GPU, else 2 CPU processes
sharing the cores; `--nproc N` overrides); `torchrun --nproc_per_node N exp5.py` runs the same code
directly, and torchrun's rendezvous flags take it across nodes. Each process is a rank: it trains on
its share of every global batch, and DDP averages the gradients, so one step equals one
single-process step on the union of the shares. That holds only if every training forward goes
through the DDP module: calling `ddp.module(...)` skips the gradient averaging (the seed's bug).

BitNet under DDP needs nothing more: every rank holds the same latent weights (DDP broadcasts them at
wrap time and applies the same averaged update), so every rank computes the same absmean scale and
the same ternary weights.

Failure handling rests on torchrun: when one rank dies, its agent stops the others at once, or with
`--max-restarts N` restarts them all, and the restarted ranks resume from the last checkpoint (train.py).
"""

import contextlib
import datetime
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utils import UserError, resolve_device

# A rank waits this long in a collective before giving up: long enough for rank 0's evaluation
# between training steps, short enough that a lost peer on another node ends the run.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)
# torchrun, except that a stop signal ends it with 128 + the signal's number, the shell's convention,
# instead of its traceback.
TORCHRUN = """import sys
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main
try:
    main()
except SignalException as e:
    sys.exit(128 + e.sigval)
"""
# The signals the launcher passes on to torchrun, which passes them on to every rank.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank 0 of 1 when not distributed."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    """Whether torchrun (or another launcher with its environment) started this process."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def default_nproc(device: str) -> int:
    """One process per visible GPU, else two CPU processes."""
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.device_count()
    return 2


def without_nproc(argv: list[str]) -> list[str]:
    """argv less the launcher's --nproc option, which torchrun would take for its own --nproc-per-node."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--nproc="):
            skip = False
        elif arg == "--nproc":
            skip = True
        else:
            kept.append(arg)
    return kept


def launch(script: str, argv: list[str], nproc: int, device: str, max_restarts: int = 0) -> int:
    """Run `script argv` under torchrun on this machine with nproc processes, restarting them all up to
    max_restarts times after one dies; returns torchrun's exit code.

    CPU processes split the cores between them (torchrun alone would give each one thread). torchrun
    runs in a process group of its own and this process passes SIGINT, SIGTERM and SIGHUP on to it, so
    each process gets a stop signal once, whether it came from the terminal (Ctrl-C), to this process
    alone (a scheduler, a notebook host) or to its process group: torchrun sends it on to every rank,
    which stop between two steps (rank 0 saving a checkpoint), and ends with 128 + the signal's number.
    """
    env = dict(os.environ)
    if device == "cpu" or not torch.cuda.is_available():
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or nproc) // nproc)))
    if max_restarts:
        # A restarted rank can read its peers' addresses of the attempt before from the store that torchrun
        # shares across attempts, and fail to connect (pytorch/pytorch#135712): give each attempt its own store.
        env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    command = [sys.executable, "-c", TORCHRUN, "--standalone", f"--nproc-per-node={nproc}",
               f"--max-restarts={max_restarts}", script, *without_nproc(argv)]
    job = subprocess.Popen(command, env=env, process_group=0)
    previous = {s: signal.signal(s, lambda signum, frame: job.send_signal(signum)) for s in FORWARDED_SIGNALS}
    try:
        return job.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def restart_count() -> int:
    """How often torchrun has restarted this job after one of its processes died (--max-restarts); 0 at first."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def init(device_name: str, distributed: bool) -> Ranks:
    """Join the process group of torchrun's environment (gloo on the CPU, nccl on CUDA)."""
    if not distributed:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError("this experiment is single-process, but torchrun started several processes:"
                            " use exp5.py/exp6.py (or --distributed) for data-parallel training")
        return Ranks(device=resolve_device(device_name))
    if not under_torchrun():
        raise UserError("distributed training needs torchrun's environment: start it with python expN.py"
                        " (it launches torchrun itself) or with torchrun")
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT,
                            device_id=device if device.type == "cuda" else None)
    return Ranks(dist.get_rank(), dist.get_world_size(), device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, ranks: Ranks) -> nn.Module:
    """The module to call for training: DDP around model when distributed, else model itself."""
    if not dist.is_initialized():
        return model
    device_ids = [ranks.device.index] if ranks.device.type == "cuda" else None
    # No broadcast of buffers before every forward: the model's are constant, or (the occupancy grid) updated
    # alike on every rank from the seed and the weights, which DDP keeps equal (tests/test_bitnerf_ddp.py).
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of values over all ranks (values itself when not distributed)."""
    if not dist.is_initialized():
        return values
    total = values.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def max_across_ranks(value: int, device: torch.device) -> int:
    """The largest of an integer over all ranks (value itself when not distributed)."""
    if not dist.is_initialized():
        return value
    largest = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return int(largest.item())


def sum_across_ranks(value: int, device: torch.device) -> int:
    if not dist.is_initialized():
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return int(total.item())


@contextlib.contextmanager
def main_rank_alone(ranks: Ranks):
    """Work rank 0 does alone (evaluation, the final renders) takes the CPU threads of its node's other
    ranks, which meanwhile wait in a collective or have finished (on the CPU each rank has cores / N)."""
    if ranks.device.type != "cpu" or ranks.world_size == 1:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(threads * int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
