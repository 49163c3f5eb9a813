"""Sparsity on the accelerator: what gating, skipping and compressed activations do to a dense mapping.

A Sparseloop-style model (Wu et al., "Sparseloop: An Analytical Approach to Sparse Tensor Accelerator
Modeling", MICRO 2022) applied on top of AccelForge's dense mapping: AccelForge gives, per einsum, the
count and energy of every action of every component on every tensor, and each component's latency;
this module scales them with statistical densities (the fraction of nonzero values of each tensor,
zeros independent and uniformly spread), a compressed format's metadata, and the gating or skipping
that each design applies at each level. The equations and each parameter's source are in docs/hw_eval.md,
"Sparsity: gating, skipping and compressed activations"; accel/workloads.py turns runs into densities and
accel/mapping.py AccelForge mappings into `Tile`s.

Three designs:
- dense: AccelForge's numbers as they are.
- gating: a zero operand gates its MAC and the operand reads that feed it (Eyeriss v1's zero gating):
  energy saved, cycles not.
- skipping: activations held compressed (bitmask or run-length, metadata counted) in DRAM and the
  global buffer (and the levels that feed the MACs), zero MACs and the reads that feed them skipped:
  energy and cycles saved, each PE's time following the slowest PE (load imbalance, `lane_time_fraction`).

No torch, no AccelForge: pure arithmetic on the mapping's numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DESIGNS = ("dense", "gating", "skipping")
ROLES = ("input", "weight", "output")


# --- Formats: the bits a tensor takes per element, metadata included ----------------------------


@dataclass(frozen=True)
class Format:
    """How a tensor is stored: dense (every value), a bitmask (one bit per element, then the nonzero
    values) or run-length (each nonzero value with the count of zeros before it, `run_bits` wide)."""

    name: str
    run_bits: int = 0


DENSE = Format("dense")
BITMASK = Format("bitmask")


def rle(run_bits: int) -> Format:
    return Format(f"rle{run_bits}", run_bits)


def bits_per_element(fmt: Format, density: float, bits: int) -> float:
    """Average bits per element of a tensor with this density (data and metadata), zeros independent.

    Run-length: every nonzero carries run_bits of zero count; a run of M = 2**run_bits zeros or more does
    not fit and takes an extra (padding) entry per M zeros: with zeros independent at q = 1 - density,
    E[floor(run / M)] = q**M / (1 - q**M) extra entries per nonzero.
    """
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    if fmt.name == "dense":
        return float(bits)
    if fmt.name == "bitmask":
        return density * bits + 1.0
    if fmt.run_bits > 0:
        if density == 0.0:  # all zeros: one padding entry per M elements
            return (bits + fmt.run_bits) / 2**fmt.run_bits
        q_m = (1.0 - density) ** (2**fmt.run_bits)
        return density * (bits + fmt.run_bits) * (1.0 + q_m / (1.0 - q_m))
    raise ValueError(f"unknown format {fmt.name}")


def traffic_ratio(fmt: Format, density: float, bits: int) -> float:
    """Bits moved in this format per bit moved dense: above 1 where metadata outweighs the zeros saved."""
    return bits_per_element(fmt, density, bits) / bits


def stored_format(formats: tuple[Format, ...], density: float, bits: int) -> tuple[Format, float]:
    """The cheapest of dense and the hardware's compressed formats for this density, and its traffic ratio.

    The density of each layer's activations is known before the layer runs (statistically, as here), so a
    per-layer mode bit can leave a tensor dense where compression would cost more (near density 1).
    """
    best = (DENSE, 1.0)
    for fmt in formats:
        ratio = traffic_ratio(fmt, density, bits)
        if ratio < best[1]:
            best = (fmt, ratio)
    return best


# --- Load imbalance ------------------------------------------------------------------------------


def expected_max_binomial(window: int, p: float, lanes: int) -> float:
    """E[max of `lanes` independent Binomial(window, p)]: sum over k < window of P(max > k) = 1 - F(k)**lanes."""
    if lanes < 1 or window < 1:
        raise ValueError(f"lanes and window must be positive, got {lanes} and {window}")
    p = min(max(p, 0.0), 1.0)
    total, cdf = 0.0, 0.0
    for k in range(window):
        cdf += math.comb(window, k) * p**k * (1.0 - p) ** (window - k)
        total += 1.0 - min(cdf, 1.0) ** lanes
    return total


def lane_time_fraction(p: float, lanes: int, window: int | None) -> float:
    """The time a skipping PE array takes, as a fraction of dense, when a fraction p of its work is effectual.

    The array's `lanes` PEs each take `window` operand slots between synchronizations (their input
    buffer's depth) and skip the ineffectual ones; every PE then waits for the slowest: the time of a
    window is the most effectual slots any PE drew, E[max Binomial(window, p)]. Perfect balance (one lane,
    or no synchronization: window None) gives exactly p; p above 1 (compression overhead) costs p.
    """
    if p >= 1.0 or lanes <= 1 or window is None:
        return p
    return expected_max_binomial(window, p, lanes) / window


# --- The hardware that exploits the zeros --------------------------------------------------------


@dataclass(frozen=True)
class SparseHardware:
    """What an architecture adds to its dense AccelForge spec to exploit zeros, by component name.

    Ports are the storages that hand the MAC one operand value per MAC (None: no such storage in the
    model, as in a systolic array, whose operands pass between PEs in registers AccelForge does not
    count). `compressed`: levels that hold activations compressed in the skipping design;
    `partial_sum_levels`: where an output is a partial sum being accumulated (dense, never compressed);
    `lane_components`: per-PE resources, whose time follows the slowest PE; `window_bits`: the input
    buffer of a PE in bits (None: a single input register, so the PEs skip in lock-step, a window of one
    value); `clock_hz`: the MAC clock (to count the PEs a mapping uses from its MAC cycles).
    """

    input_port: str | None
    weight_port: str | None
    output_port: str | None
    compressed: tuple[str, ...]
    partial_sum_levels: tuple[str, ...]
    lane_components: tuple[str, ...]
    window_bits: int | None
    clock_hz: float
    formats: tuple[Format, ...]
    mac: str = "MAC"

    def window(self, input_bits: int) -> int:
        """Input values a PE holds: its buffer's bits over the input's width (narrower inputs fit more)."""
        return 1 if self.window_bits is None else max(1, self.window_bits // input_bits)


# --- Densities and the dense mapping of a tile ---------------------------------------------------


@dataclass(frozen=True)
class Densities:
    """Fractions of nonzero values of one einsum's operands: input, weight and (stored) output.

    `effectual` is the fraction of MACs with both operands nonzero, the product of the two densities
    under independence (a measured joint density can be passed instead).
    """

    input: float = 1.0
    weight: float = 1.0
    output: float = 1.0
    joint: float | None = None

    @property
    def effectual(self) -> float:
        return self.input * self.weight if self.joint is None else self.joint


@dataclass
class Tile:
    """AccelForge's dense mapping of one tile: every action (einsum, component, tensor, action, count,
    energy in J; tensor None for leakage and "None" for compute), each (einsum, component)'s latency in
    s, and each einsum's input, weight and output tensor with the tensors' bits per value; to tell final
    outputs from partial sums, each einsum's output elements and each component's bits per action (an
    action moves that many bits: the counts above are in those units; missing: 1)."""

    actions: list[tuple[str, str, str | None, str, float, float]]
    latency_s: dict[tuple[str, str], float]
    roles: dict[str, dict[str, str]]
    bits: dict[str, int]
    output_elements: dict[str, int] = field(default_factory=dict)
    bits_per_action: dict[str, dict[str, float]] = field(default_factory=dict)

    def final_actions(self, einsum: str, component: str, action: str) -> float | None:
        """How many of a component's reads or writes of an einsum's output can carry final values: each
        output element is written once and read once (to move on) at its final value; the rest of the
        traffic is partial sums. None: unknown (every action taken as final)."""
        if einsum not in self.output_elements:
            return None
        per_action = self.bits_per_action.get(component, {}).get(action, 1)
        return self.output_elements[einsum] * self.bits[self.roles[einsum]["output"]] / per_action

    def macs(self, einsum: str, mac: str = "MAC") -> float:
        return sum(count for e, c, t, a, count, _ in self.actions if e == einsum and c == mac and a != "leak")


@dataclass
class Result:
    energy_j: dict[str, float]  # by component
    latency_s: float
    mac_time_s: float  # the MAC component's time summed over einsums (its share of the latency bound)
    mac_time_balanced_s: float  # the same under perfect balance
    formats: dict[str, str] = field(default_factory=dict)  # tensor -> stored format (skipping)

    @property
    def energy_total_j(self) -> float:
        return sum(self.energy_j.values())


def action_factor(
    design: str,
    hw: SparseHardware,
    component: str,
    role: str | None,
    action: str,
    d: Densities,
    input_ratio: float,
    output_ratio: float,
) -> float:
    """The fraction of a dense action's count (and energy) that a design still performs.

    role: the tensor's role in the einsum (input, weight, output) or "compute" for the MAC.
    Both designs: a MAC with a zero operand is not performed (effectual fraction); the weight port is
    not read for a zero input (the input leads: it is read first, its zero flag gates the weight read);
    the output port's partial sum is not updated for a MAC not performed. Skipping adds: activations
    move compressed (traffic ratio of their format) through the input port and the compressed levels;
    partial sums stay dense. Gated and skipped actions cost no energy.
    """
    if design == "dense":
        return 1.0
    if role == "compute":
        return d.effectual
    if role == "weight" and component == hw.weight_port and action == "read":
        return d.input
    if role == "output" and component == hw.output_port:
        return d.effectual
    if design == "gating":
        return 1.0
    if design != "skipping":
        raise ValueError(f"unknown design {design}; expected one of {', '.join(DESIGNS)}")
    if role == "input" and (component == hw.input_port or component in hw.compressed):
        return input_ratio
    if role == "output" and component in hw.compressed and component not in hw.partial_sum_levels:
        return output_ratio  # of the final values; evaluate keeps partial sums dense
    return 1.0


def evaluate(
    design: str, hw: SparseHardware, tile: Tile, densities: dict[str, Densities], balanced: bool = False
) -> Result:
    """Energy by component and latency of a tile under a design, from its dense mapping and the densities
    of each einsum's operands (an einsum missing from densities is dense); balanced: assume perfect load
    balance (as Sparseloop's expected-value compute model does) instead of the PE array's imbalance.

    Energy: every action's dense energy times action_factor; leakage scales with the einsum's latency.
    Latency: each (einsum, component)'s dense latency times the fraction of its actions the design still
    performs (skipping only: gated actions still take their cycle), a per-PE component's through
    lane_time_fraction; an einsum takes its slowest component, as AccelForge's own latency does.
    """
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design}; expected one of {', '.join(DESIGNS)}")
    role_of = {einsum: {tensor: role for role, tensor in roles.items()} for einsum, roles in tile.roles.items()}
    ratios, formats = {}, {}
    for einsum, roles in tile.roles.items():
        d = densities.get(einsum, Densities())
        for role, density in (("input", d.input), ("output", d.output)):
            fmt, ratio = stored_format(hw.formats, density, tile.bits[roles[role]])
            ratios[einsum, role] = ratio
            formats[roles[role]] = fmt.name
    energy: dict[str, float] = {}
    performed: dict[tuple[str, str], list[float]] = {}  # (einsum, component) -> [dense actions, performed]
    leak: list[tuple[str, str, float]] = []
    for einsum, component, tensor, action, count, joules in tile.actions:
        if action == "leak":
            leak.append((einsum, component, joules))
            continue
        d = densities.get(einsum, Densities())
        role = "compute" if component == hw.mac else role_of[einsum].get(tensor)
        factor = action_factor(
            design,
            hw,
            component,
            role,
            action,
            d,
            ratios.get((einsum, "input"), 1.0),
            ratios.get((einsum, "output"), 1.0),
        )
        if role == "output" and factor != 1.0 and component != hw.output_port and count > 0:
            final = tile.final_actions(einsum, component, action)
            if final is not None and final < count:  # partial sums moving through a compressed level stay dense
                factor = (final * factor + (count - final)) / count
        energy[component] = energy.get(component, 0.0) + joules * factor
        counts = performed.setdefault((einsum, component), [0.0, 0.0])
        counts[0] += count
        counts[1] += count * factor
    latency = mac_time = mac_balanced = 0.0
    einsum_latency: dict[str, tuple[float, float]] = {}  # einsum -> (dense, this design)
    for einsum in tile.roles:
        components = {c: s for (e, c), s in tile.latency_s.items() if e == einsum}
        mac_s = components.get(hw.mac, 0.0)
        lanes = max(1, round(tile.macs(einsum, hw.mac) / (mac_s * hw.clock_hz))) if mac_s > 0 and not balanced else 1
        window = hw.window(tile.bits[tile.roles[einsum]["input"]])
        scaled, balanced_mac = {}, mac_s
        for component, seconds in components.items():
            dense_count, done = performed.get((einsum, component), (0.0, 0.0))
            fraction = done / dense_count if design == "skipping" and dense_count > 0 else 1.0
            if component in hw.lane_components:
                if component == hw.mac:
                    balanced_mac = seconds * fraction
                fraction = lane_time_fraction(fraction, lanes, window)
            scaled[component] = seconds * fraction
        dense_s, sparse_s = max(components.values(), default=0.0), max(scaled.values(), default=0.0)
        einsum_latency[einsum] = (dense_s, sparse_s)
        latency += sparse_s
        mac_time += scaled.get(hw.mac, 0.0)
        mac_balanced += balanced_mac
    for einsum, component, joules in leak:
        dense_s, sparse_s = einsum_latency.get(einsum, (0.0, 0.0))
        energy[component] = energy.get(component, 0.0) + (joules * sparse_s / dense_s if dense_s > 0 else joules)
    return Result(energy, latency, mac_time, mac_balanced, formats if design == "skipping" else {})
