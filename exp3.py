"""Experiment 3: exp2 with a 4x larger ray batch. Options: python exp3.py --help."""

import train

if __name__ == "__main__":
    train.main("exp3")
