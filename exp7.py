"""Experiment 7: NeRF trained in int8 (exp1 + int8 training). Options: python exp7.py --help."""

import train

if __name__ == "__main__":
    train.main("exp7")
