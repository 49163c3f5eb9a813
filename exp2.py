"""Experiment 2: exp1 with automatic mixed precision and gradient scaling. Options: python exp2.py --help."""

import train

if __name__ == "__main__":
    train.main("exp2")
