"""report.py's sections, one concern per module (torch-free, like report.py):

- runs.py: the runs of each experiment, and the experiments of the suite without a finished run
- results.py: the table of every experiment
- intervals.py: means over seeds with t intervals, differences against exp1 paired by seed
- skipping.py: empty-space skipping, measured, and its energy with and without the grid
- plots.py: saving figures, the PSNR curves, the renders, quality against cost (the Pareto plot)
- hardware.py: each run's own accelerator results, energy per frame and the three designs
- ptq.py: post-training quantization beside BitNeRF's quantized training
- ladder.py: the precision ladder (every precision trained or quantized after training: quality over seeds, size,
  throughput, energy per sample) with its Pareto plot, and the bytes the data-parallel runs send per step
- analyses.py: analyze.py's analyses.json as tables and plots
"""
