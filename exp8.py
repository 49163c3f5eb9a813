"""Experiment 8: NeRF trained in fp8 (exp1 + fp8 training, emulated where the device has no fp8
matmul). Options: python exp8.py --help.
"""

import train

if __name__ == "__main__":
    train.main("exp8")
