"""Experiment 1: NeRF baseline in fp32. Options: python exp1.py --help."""

import train

if __name__ == "__main__":
    train.main("exp1")
