"""Data-parallel training of NeRF and BitNeRF: the process group, DDP wrapping, and self-launch.

`python exp5.py` relaunches itself under torchrun (one process per visible GPU, else 2 CPU processes
sharing the cores; `--nproc N` overrides); `torchrun --nproc_per_node N exp5.py` runs the same code
directly, and torchrun's rendezvous flags take it across nodes. Each process is a rank: it trains on
its share of every global batch, and DDP averages the gradients, so one step equals one
single-process step on the union of the shares. That holds only if every training forward goes
through the DDP module: calling `ddp.module(...)` skips the gradient averaging (the seed's bug).

The gradients travel through a DDP communication hook, plain fp32 all-reduce or a compressed one
(grad_compression: bf16, PowerSGD), and every run counts the bytes each rank's hook hands to all-reduce
(sent_bytes_per_step).

BitNet under DDP needs nothing more: every rank holds the same latent weights (DDP broadcasts them at
wrap time and applies the same averaged update), so every rank computes the same absmean scale and
the same ternary weights.

Evaluation is data-parallel too (map_across_ranks): every rank renders its share of the test views and
video frames, and rank 0 gathers them, in order, and writes the run directory.

Failure handling rests on torchrun: when one rank dies, its agent stops the others at once, or with
`--max-restarts N` restarts them all, and the restarted ranks resume from the last checkpoint (train.py).
"""

import datetime
import inspect
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from devices import resolve_device
from utils import UserError, without_option

# A rank waits this long in a collective before giving up: long enough for what rank 0 does alone
# (a checkpoint, the run directory's files, W&B) and for one test view of a slower peer, short enough
# that a lost peer on another node ends the run.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)
# CUDA ranks' gloo group for numbers the host reduces (host_all_reduce); None: the default group (gloo on the
# CPU), or not distributed. Reading an nccl collective's result on the host would wait for every queued step.
HOST_GROUP = None
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


def launch_nproc(nproc: int | None, device: torch.device) -> int:
    """The processes to launch on device (devices.resolve_device): nproc, by default one per visible GPU, else two
    CPU processes. A GPU rank takes a GPU of its own, so more processes than visible GPUs is a UserError."""
    if device.type == "cpu":
        return nproc or 2
    gpus = torch.cuda.device_count()
    if nproc is not None and nproc > gpus:
        raise UserError(
            f"--nproc {nproc} is more processes than the {gpus} visible GPU{'s' * (gpus > 1)}"
            f" (one process per GPU): use --nproc {gpus} or fewer, or --device cpu"
        )
    return nproc or gpus


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
    command = [
        sys.executable,
        "-c",
        TORCHRUN,
        "--standalone",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={max_restarts}",
        script,
        *without_option(argv, "--nproc"),
    ]
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
            raise UserError(
                "this experiment is single-process, but torchrun started several processes:"
                " use exp5.py/exp6.py (or --distributed) for data-parallel training"
            )
        return Ranks(device=resolve_device(device_name))
    if not under_torchrun():
        raise UserError(
            "distributed training needs torchrun's environment: start it with python expN.py"
            " (it launches torchrun itself) or with torchrun"
        )
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        timeout=COLLECTIVE_TIMEOUT,
        device_id=device if device.type == "cuda" else None,
    )
    if device.type == "cuda":
        global HOST_GROUP
        HOST_GROUP = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)
    return Ranks(dist.get_rank(), dist.get_world_size(), device)


def shutdown() -> None:
    global HOST_GROUP
    if dist.is_initialized():
        dist.destroy_process_group()
    HOST_GROUP = None


# torch 2.14 names the option forward_sync_buffers and warns at the old name, which is all that torch 2.11 (the floor)
# knows. Either way buffers are synced once when DDP starts, and then never.
NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


def wrap(model: nn.Module, ranks: Ranks, grad_compression: str = "none") -> nn.Module:
    """The module to call for training: DDP around model when distributed, else model itself.

    Its gradients travel through the communication hook of grad_compression (COMM_HOOKS), counted by a
    GradientTraffic that sent_bytes_per_step reads."""
    if not dist.is_initialized():
        return model
    device_ids = [ranks.device.index] if ranks.device.type == "cuda" else None
    # No broadcast of buffers before every forward: the model's are constant, or (the occupancy grid) updated
    # alike on every rank from the seed and the weights, which DDP keeps equal (tests/test_bitnerf_ddp.py).
    ddp = DistributedDataParallel(model, device_ids=device_ids, **NO_FORWARD_BUFFER_SYNC)
    traffic = GradientTraffic()
    hook_state, hook = COMM_HOOKS[grad_compression](traffic.group)
    ddp.register_comm_hook(hook_state, traffic.counting(hook))
    ddp.gradient_traffic = traffic
    return ddp


# PowerSGD (Vogels et al., 2019) as grad_compression "powersgd": each gradient matrix travels as its rank-4
# factors P and Q, and biases and matrices too small to gain travel whole (torch's min_compression_rate 2).
# Rank 4, the most of the usual 1 to 4: each lower rank cost more test PSNR against exp5, for a small share of
# its bytes either way (docs/distributed.md, "Measured"). At rank 4 the factors are orthogonalized by QR, which
# an all-zero gradient does not turn into NaN (the Gram-Schmidt of ranks 1 and 2 would need an epsilon). Plain
# all-reduce for the first 10 steps: error feedback and warm start need at least 2; torch's default, 1000, suits
# long ImageNet runs and would leave a quick run uncompressed for its first quarter; a longer plain start gained
# less than one seed tells from noise (the same section).
POWERSGD = dict(matrix_approximation_rank=4, start_powerSGD_iter=10)

# grad_compression -> (the hook's state, the hook) for gradients all-reduced through a process group:
# plain all-reduce in fp32 (what DDP does without a hook), in bf16 (half the bytes; gloo reduces bf16, tested,
# and NCCL after 2.9.6, as the hook's documentation says), or PowerSGD's low-rank factors.
COMM_HOOKS: dict[str, Callable[[dist.ProcessGroup], tuple[Any, Callable]]] = {
    "none": lambda group: (group, default_hooks.allreduce_hook),
    "bf16": lambda group: (group, default_hooks.bf16_compress_hook),
    "powersgd": lambda group: (
        powerSGD_hook.PowerSGDState(process_group=group, **POWERSGD),
        powerSGD_hook.powerSGD_hook,
    ),
}


class CountingGroup(dist.ProcessGroup):
    """A process group for a communication hook that adds up the bytes of the tensors all-reduced through it and
    passes them on to the default group.

    Given to a hook as its group, it sees exactly the tensors the hook hands to the collective, compressed or
    not, including those a hook all-reduces later in a future's callback (PowerSGD's P and Q). Any other
    collective through it raises (it is in no group map) rather than going uncounted."""

    def __init__(self):
        super().__init__(dist.get_rank(), dist.get_world_size())
        self.sent_bytes = 0
        self.lock = threading.Lock()  # hooks and their callbacks run on autograd's and the backend's threads

    def allreduce(self, tensors, opts):
        with self.lock:
            self.sent_bytes += sum(t.numel() * t.element_size() for t in tensors)
        # The default group is looked up, not held: a gloo worker thread keeps its last work's callbacks, which
        # hold the hook's group, until its next work, and dropping the last reference to a group there destroys
        # it on its own thread, which aborts the process ("Resource deadlock avoided"): held, it aborted
        # PowerSGD runs that shut down at once (docs/distributed.md, "Measured").
        return dist.group.WORLD.allreduce(tensors, opts)


class GradientTraffic:
    """The gradient communication of one DDP module on this rank: the bytes its hook all-reduced (group) and the
    rounds of bucket reductions they took, one per optimizer step (no_sync skips the reduction of all
    micro-batches but the last)."""

    def __init__(self):
        self.group = CountingGroup()
        self.rounds = 0

    def counting(self, hook: Callable) -> Callable:
        """hook, counting a round at the last bucket that DDP reduces in a step."""

        def counted_hook(state, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
            if bucket.is_last():
                self.rounds += 1
            return hook(state, bucket)

        return counted_hook


def sent_bytes_per_step(step_model: nn.Module) -> int | None:
    """The bytes this rank's gradient communication hook handed to all-reduce per optimizer step, on average over
    the steps this process took; None when not distributed or before the first step. No collective: rank 0
    alone may ask.

    Counted from the tensors themselves (CountingGroup): bf16 counts 2 bytes an element, PowerSGD its P and Q
    factors and what it sends uncompressed (and its first steps of plain all-reduce). It is the payload
    handed to the collective, the same measure for every hook; a ring all-reduce puts about 2(n-1)/n times that
    on the wire from each of n ranks."""
    traffic = getattr(step_model, "gradient_traffic", None)
    if traffic is None or not traffic.rounds:
        return None
    return round(traffic.group.sent_bytes / traffic.rounds)


def mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of values over all ranks (values itself when not distributed)."""
    if not dist.is_initialized():
        return values
    total = values.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def max_across_ranks(value: int) -> int:
    """The largest of an integer over all ranks (value itself when not distributed), through the CPU."""
    return int(host_all_reduce(value, torch.int64, dist.ReduceOp.MAX))


def sum_across_ranks(value: int) -> int:
    return int(host_all_reduce(value, torch.float64, dist.ReduceOp.SUM))


def host_all_reduce(value, dtype: torch.dtype, op) -> float:
    """A number of this process's reduced over all ranks in a CPU tensor: through the gloo group of CUDA
    ranks (HOST_GROUP), so that it waits for no GPU work; the train loop asks it between every two steps."""
    if not dist.is_initialized():
        return value
    total = torch.tensor([value], dtype=dtype)
    dist.all_reduce(total, op=op, group=HOST_GROUP)
    return total.item()


def map_across_ranks(
    work: Callable[[Any], Any], items: list, device: torch.device, desc: str | None = None
) -> list | None:
    """[work(item) for item in items] with the items shared out among the N ranks: rank r works on items r,
    r + N, r + 2N, ... and rank 0 returns every result in the order of items (tensors on device); the other
    ranks return None. Every rank must call it, with the same items.

    The ranks gather one round of N results at a time, so no rank waits in a collective longer than one
    item takes, and rank 0 receives one round at a time rather than every rank's share at once. Results
    travel through the CPU (gather_object pickles them), which works on gloo and nccl, across nodes too.
    """
    if not dist.is_initialized():
        return [work(item) for item in tqdm(items, desc=desc, leave=False, disable=None if desc else True)]
    rank, world_size = dist.get_rank(), dist.get_world_size()
    results = [] if rank == 0 else None
    for start in tqdm(
        range(0, len(items), world_size), desc=desc, leave=False, disable=None if desc and rank == 0 else True
    ):
        mine = moved(work(items[start + rank]), torch.device("cpu")) if start + rank < len(items) else None
        gathered = [None] * world_size if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0, group=HOST_GROUP)  # the CPU group of CUDA ranks
        if rank == 0:
            results += [moved(result, device) for result in gathered[: len(items) - start]]
    return results


def moved(result, device: torch.device):
    """A result with its tensors (itself, or a dict's values) on device; anything else as it is."""
    if isinstance(result, torch.Tensor):
        return result.to(device)
    if isinstance(result, dict):
        return {key: moved(value, device) for key, value in result.items()}
    return result


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
