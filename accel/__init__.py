"""hw_eval.py's parts, one job per module (importing the package loads none of them):

- toolchain.py: AccelForge and hwcomponents installed, CACTI and NeuroSim rebuilt where they do not run, graphviz's dot
- components.py: the MAC of each layer's operand widths (hwcomponents), the partial sums' width
- architectures.py: the catalogue: AccelForge's digital examples, their ternary-native variants, node, clock and
  zero handling of each; --arch's selection
- specs.py: an architecture (or an architecture file) as an AccelForge spec with that MAC, and the study's Eyeriss
- cim.py: AccelForge's compute-in-memory designs as specs, each layer at the integer widths a macro computes
- workloads.py: a run's layers as one AccelForge workload per field, and its operands' densities
- mapping.py: tiles mapped by AccelForge's mapper, cached on disk, mapped in parallel
- sparsity.py: the gating and skipping designs on a dense mapping (no AccelForge)
- costing.py: a run's tiles under each design scaled to a frame: the rows of results.csv
- study.py: hw_eval.py --validate-study, the accelerating-NeRFs study's MLP against its published ratios
- results.py: what hw_eval.py writes and report.py reads (each run's own hw_eval.json, tied to the run),
  and how both format it; torch-free and AccelForge-free
"""
