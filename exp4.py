"""Experiment 4: exp1 with BitNeRF (BitNet b1.58 ternary weights, int8 activations). Options: python exp4.py --help."""

import train

if __name__ == "__main__":
    train.main("exp4")
