"""Experiment 9: exp5 with compressed gradients (a bf16 DDP communication hook). Options:
python exp9.py --help.

`python exp9.py` launches torchrun itself; `torchrun --nproc_per_node N exp9.py` works too.
"""

import train

if __name__ == "__main__":
    train.main("exp9")
