"""What ends a run early and how it ends cleanly: stop signals and running out of memory.

train.py acts on both between two steps, so that the checkpoint it saves holds exactly the optimizer
steps applied (docs/faults.md).
"""

import contextlib
import signal
import threading

from devices import is_out_of_memory

# The signals that stop a run with a checkpoint: Ctrl-C, and what schedulers, notebook hosts and torchrun send.
# A run they stop exits with 128 + the signal's number, the shell's convention: 130 for SIGINT, 143 for SIGTERM.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What to do when memory runs out in the part of a run that an option sizes.
OUT_OF_MEMORY_ADVICE = {
    # The step's rays are split to fit: a smaller split computes the same step, so the run can continue.
    "--micro-batch-rays": "continue with --resume and a lower --micro-batch-rays (the same steps, in smaller parts),"
    " or free memory",
    "--chunk": "continue with --resume and a lower --chunk",
}


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM during a run. Until the final evaluation, the handler only notes the
    signal and the loop acts on it between two steps, so that the checkpoint it saves holds exactly the
    optimizer steps applied and --resume continues bit for bit. In the final evaluation (`at_once`), which
    the last checkpoint already precedes, the handler raises KeyboardInterrupt.

    signum: the first signal noted, or 0."""

    def __init__(self):
        self.signum, self.at_once, self.previous = 0, False, {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # the only thread Python runs handlers in
            self.previous = {s: signal.signal(s, self.note) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def note(self, signum: int, frame) -> None:
        self.signum = self.signum or signum
        if self.at_once:
            raise KeyboardInterrupt


class OutOfMemory(Exception):
    """Memory ran out in a part of the run whose size one option sets."""

    def __init__(self, option: str, value: int):
        super().__init__(option, value)
        self.option, self.value = option, value

    def message(self, checkpoint: str) -> str:
        return f"out of memory with {self.option} {self.value}; {checkpoint}: {OUT_OF_MEMORY_ADVICE[self.option]}"


@contextlib.contextmanager
def sized_by(option: str, value: int):
    """Running out of memory in the block (CUDA, the CPU allocator or Python) raises OutOfMemory naming option."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        raise OutOfMemory(option, value) from None
