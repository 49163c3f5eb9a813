"""Mapping tiles with AccelForge's FFM mapper, cached on disk and mapped in parallel.

A tile is one field's workload of `rows` samples on one architecture. Its mapping is cached as a JSON file
keyed by everything that determines it (cache_path), so a second hw_eval.py, and runs with equal fields
(exp2 and exp3), map nothing again; the missing tiles are mapped `jobs` at a time, one process each.
"""

import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from accel import architectures, cim, components, sparsity, specs
from accel.architectures import is_file
from accel.specs import build_spec, structure
from files import write_json

ROLES = ("input", "weight", "output")  # the renames that name an einsum's operands (not FLOAT_TENSORS)
# AccelForge's mapper spends most of its time in sympy, whose cache of 1000 results by default is too small for
# one mapping (docs/hw_eval.md, "What is mapped"). sympy reads the size when it is first imported: set here, before
# map_tile imports it, and inherited by the processes map_missing starts.
os.environ.setdefault("SYMPY_CACHE_SIZE", "100000")


def map_tile(arch_name: str, workload: dict, int_accumulator: int) -> dict:
    """Map one workload with AccelForge's FFM mapper (lowest energy); energies in J, latency in s, per tile.
    arch_name: a key of specs.architecture (a name, or an architecture file's path) or of STUDY_ARCHS.

    The mapper runs in a temporary directory (it writes mapping.svg into the working directory) with
    its console output captured, in one process: AccelForge's own pool, which splits one mapping across
    processes, was slower on 2 cores (docs/hw_eval.md, "What is mapped"); map_missing runs whole tiles in parallel
    instead.
    """
    import accelforge as af
    from accelforge.mapper.FFM.main import map_workload_to_arch

    af.set_n_parallel_jobs(1)
    spec = build_spec(arch_name, workload, int_accumulator)
    with (
        tempfile.TemporaryDirectory() as tmp,
        contextlib.chdir(tmp),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        mapping = map_workload_to_arch(spec, print_progress=False)
    if len(mapping) > 1:  # several objectives give a Pareto front: take the fastest, then the least energy
        latency, energy = mapping.latency(list_if_one_mapping=True), mapping.energy(list_if_one_mapping=True)
        mapping = mapping[min(range(len(mapping)), key=lambda i: (latency[i], energy[i]))]
    return mapping_result(mapping, workload, spec)


def bits_per_action(spec) -> dict[str, dict[str, float]]:
    """Each component's bits per read and write, as the spec gives them (the default expression: 1 bit)."""
    per_component = {}
    for node in spec.arch.nodes:
        for node_action in getattr(node, "actions", None) or []:
            bits = getattr(node_action, "bits_per_action", None)
            per_component.setdefault(node.name, {})[node_action.name] = bits if isinstance(bits, (int, float)) else 1
    return per_component


def output_elements(workload: dict) -> dict[str, int]:
    """Each einsum's output elements: the product of its output's ranks' sizes."""
    sizes = {rank: int(bound.split("<")[-1]) for rank, bound in workload["iteration_space_shape"].items()}
    return {
        e["name"]: math.prod(
            sizes[index] for index in next(a for a in e["tensor_accesses"] if a.get("output"))["projection"].values()
        )
        for e in workload["einsums"]
    }


def mapping_result(mapping, workload: dict, spec=None) -> dict:
    """What the cache keeps of a mapping: energy by component, MAC energy by einsum (a macro's: its array's), latency
    and MACs (of the spec's compute component, specs.structure; without a spec: MAC), each component's energy group, and
    for the sparsity model every action (einsum, component, tensor, action, count, energy; leakage has tensor None),
    each (einsum, component)'s latency, each einsum's input, weight and output tensor and bits, its output's elements
    and (with the spec) each component's bits per action."""
    found = structure(spec, "spec") if spec is not None else None
    compute = found.compute if found else "MAC"
    mac_parts = [c for c, group in found.groups().items() if group == "mac"] if found else [compute]
    per_einsum_component = mapping.energy(per_component=True, per_einsum=True)
    energy_j: dict[str, float] = {}
    for (_, component), joules in per_einsum_component.items():
        energy_j[component] = energy_j.get(component, 0.0) + float(joules)
    counts = mapping.actions(per_einsum=True, per_component=True, per_tensor=True)
    detail = mapping.energy(per_einsum=True, per_component=True, per_tensor=True, per_action=True)
    actions = [
        [einsum, component, tensor, action, float(counts.get((einsum, component, tensor, action), 0.0)), float(joules)]
        for (einsum, component, tensor, action), joules in detail.items()
    ]
    actions += [
        [einsum, component, tensor, action, float(n), 0.0]  # counted, but costing nothing
        for (einsum, component, tensor, action), n in counts.items()
        if (einsum, component, tensor, action) not in detail and n
    ]
    return {
        "energy_j": energy_j,
        "mac_energy_j": {
            e["name"]: sum(float(per_einsum_component.get((e["name"], c), 0.0)) for c in mac_parts)
            for e in workload["einsums"]
        },
        "latency_s": float(mapping.latency()),
        "macs": int(sum(n for (e, c, a), n in mapping.actions(per_einsum=True).items() if c == compute)),
        "compute": compute,
        "groups": found.groups() if found else {},
        "actions": actions,
        "component_latency_s": [
            [e, c, float(seconds)] for (e, c), seconds in mapping.latency(per_einsum=True, per_component=True).items()
        ],
        "roles": {e["name"]: {role: e["renames"][role] for role in ROLES} for e in workload["einsums"]},
        "bits": {a["name"]: a["bits_per_value"] for e in workload["einsums"] for a in e["tensor_accesses"]},
        "output_elements": output_elements(workload),
        "bits_per_action": bits_per_action(spec) if spec is not None else {},
    }


def sparse_tile(result: dict) -> sparsity.Tile:
    """A cached mapping as the sparsity model reads it."""
    return sparsity.Tile(
        actions=[tuple(a) for a in result["actions"]],
        latency_s={(e, c): s for e, c, s in result["component_latency_s"]},
        roles=result["roles"],
        bits=result["bits"],
        output_elements=result["output_elements"],
        bits_per_action=result["bits_per_action"],
    )


def cache_path(arch_name: str, workload: dict, int_accumulator: int, cache_dir: Path) -> Path:
    """Where a tile's mapping is cached: keyed by the workload, the architecture, the accumulator width,
    AccelForge's version and the code that makes a mapping (the architectures, the MAC models and this
    module: any change to them invalidates it; the sparsity model works on the cached dense mapping), and for an
    architecture file its contents."""
    from importlib.metadata import version

    modules = (architectures.__file__, cim.__file__, components.__file__, specs.__file__, __file__)
    code = b"".join(Path(module).read_bytes() for module in modules) + (
        Path(arch_name).read_bytes() if is_file(arch_name) else b""
    )
    model = hashlib.sha256(code).hexdigest()
    key = json.dumps(
        {
            "workload": workload,
            "arch": arch_name,
            "int_accumulator": int_accumulator,
            "accelforge": version("accelforge"),
            "model": model,
        },
        sort_keys=True,
    )
    return cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


def map_to_cache(path: Path, arch_name: str, workload: dict, int_accumulator: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, map_tile(arch_name, workload, int_accumulator))


def map_missing(tiles: dict[Path, tuple[str, dict, int]], jobs: int) -> None:
    """Map every tile whose cache file is missing, `jobs` tiles at a time in separate processes.

    One mapping is single-threaded Python, so independent tiles in parallel scale with the cores (docs/hw_eval.md,
    "What is mapped").
    """
    missing = {path: tile for path, tile in tiles.items() if not path.is_file()}
    if not missing:
        return
    with tqdm(total=len(missing), desc="hw_eval mappings", unit="tile", disable=None) as progress:
        if min(jobs, len(missing)) == 1:
            for path, tile in missing.items():
                progress.set_postfix_str(tile[0])
                map_to_cache(path, *tile)
                progress.update()
            return
        # spawn, not fork: the caller may hold threads (PyTorch's in the tests), which fork can deadlock.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(jobs, len(missing)), mp_context=context) as pool:
            for future in as_completed([pool.submit(map_to_cache, path, *tile) for path, tile in missing.items()]):
                future.result()
                progress.update()
