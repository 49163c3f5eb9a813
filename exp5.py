"""Experiment 5: NeRF with DistributedDataParallel (exp1 + DDP). Options: python exp5.py --help.

`python exp5.py` launches torchrun itself; `torchrun --nproc_per_node N exp5.py` works too.
"""

import train

if __name__ == "__main__":
    train.main("exp5")
