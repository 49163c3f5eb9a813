"""Experiment 6: BitNeRF with DistributedDataParallel (exp4 + DDP). Options: python exp6.py --help.

`python exp6.py` launches torchrun itself; `torchrun --nproc_per_node N exp6.py` works too.
"""

import train

if __name__ == "__main__":
    train.main("exp6")
