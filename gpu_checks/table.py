"""gpu_check's results: <out>/gpu_check.json and the table printed at the end."""

import os
import platform
from pathlib import Path

from devices import nvidia_driver
from files import write_json
from gpu_checks.plan import BUDGET_S, Check, Plan, capability_text, estimated_total
from gpu_checks.runners import Result

JSON_NAME = "gpu_check.json"


def environment(plan: Plan) -> dict:
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cpus": len(os.sched_getaffinity(0)),
        "nvidia": nvidia_driver(),
    }
    if plan.device == "cuda":
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return env


def speedups(results: dict[str, Result]) -> dict:
    """Steady samples/s of exp2 (AMP), exp3 (AMP, 4x batch), tf32 and bf16 over exp1's (fp32)."""
    faster = ("exp2", "exp3", "tf32", "bf16")
    rate = {
        name: results[name].metrics.get("steady_samples_per_s")
        for name in ("exp1", *faster)
        if name in results and results[name].status == "pass"
    }
    return {
        f"{name}_over_exp1": round(rate[name] / rate["exp1"], 2) for name in faster if name in rate and "exp1" in rate
    }


def failed_checks(results: dict[str, Result]) -> list[str]:
    return [r.name for r in results.values() if r.status == "fail"]


def write_report(plan: Plan, checks: list[Check], results: dict[str, Result]) -> dict:
    """Write <out>/gpu_check.json (the plan, the environment, the speedups and every check's Result); returns it."""
    on_gpu = plan.device == "cuda"
    report = {
        "device": plan.device,
        "preset": "full" if on_gpu else "quick",
        "steps": plan.steps,
        "data": plan.data,
        "capability": capability_text(plan.capability) if plan.capability else None,
        "gpu_count": plan.gpu_count,
        "passed": not failed_checks(results),
        "budget_s": BUDGET_S if on_gpu else None,
        "estimated_s": estimated_total(plan, checks) if on_gpu else None,
        "seconds": round(sum(r.seconds for r in results.values()), 1),
        "environment": environment(plan),
        "speedup": speedups(results),
        "checks": [vars(r) for r in results.values()],
    }
    write_json(plan.out / JSON_NAME, report)
    return report


def print_table(results: dict[str, Result]) -> None:
    print(f"\n{'check':<9}{'result':<8}{'seconds':>8}{'samples/s':>12}{'peak MiB':>10}{'reserved':>10}{'MFU':>7}  note")
    for r in results.values():
        samples = r.metrics.get("steady_samples_per_s")
        peak, reserved = r.metrics.get("peak_mem_bytes"), r.metrics.get("peak_reserved_bytes")
        mfu = r.metrics.get("mfu")
        print(
            f"{r.name:<9}{r.status:<8}{r.seconds:>8.1f}{f'{samples:,}' if samples else '':>12}"
            f"{f'{peak / 2**20:,.0f}' if peak else '':>10}{f'{reserved / 2**20:,.0f}' if reserved else '':>10}"
            f"{f'{mfu:.3f}' if mfu is not None else '':>7}  {r.note}"
        )


def print_report(report: dict, results: dict[str, Result], out: Path) -> None:
    """The table, the speedups over exp1, and a last line: how many checks did not fail, in how long."""
    print_table(results)
    for key, value in report["speedup"].items():
        print(f"{key.replace('_over_', ' over ')} (steady samples/s): {value:.2f}x")
    failed = failed_checks(results)
    estimate = f" (estimated {report['estimated_s']:.0f} s)" if report["estimated_s"] is not None else ""
    print(
        f"{len(results) - len(failed)} of {len(results)} checks did not fail{f'; failed: {failed}' if failed else ''}"
        f" in {report['seconds']:.0f} s{estimate} -> {out / JSON_NAME}"
    )
