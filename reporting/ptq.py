"""Post-training quantization (ptq.py's ptq.json in a run directory) beside the runs that trained BitNeRF."""

import rundir
from accel.results import markdown_table, si
from files import read_json


def ptq_table(runs) -> str | None:
    """Post-training quantization variants (ptq.py) beside the runs that trained BitNeRF, or None without ptq.json."""
    rows = []
    for run_dir, _ in runs:
        if (run_dir / rundir.PTQ).exists():
            rows += [[f"{run_dir.name}, {v['variant']}", "after training (ptq.py)", f"{v['weight_bits']:g}",
                      si(v["model_bytes"], "B"), f"{v['psnr_test']:.2f}", f"{v['ssim_test']:.3f}"]
                     for v in read_json(run_dir / rundir.PTQ)]
    if not rows:
        return None
    rows += [[run_dir.name, "during training (BitNet b1.58)", f"{s['weight_bits']:g}", si(s["model_bytes"], "B"),
              f"{s['psnr_test']:.2f}", f"{s['ssim_test']:.3f}"] for run_dir, s in runs if s["model"] == "bitnerf"]
    return markdown_table(["model", "quantized", "weight bits", "model size", "test PSNR (dB)", "test SSIM"], rows)


def ptq_section(runs) -> list[str]:
    """The section, or nothing where no run holds a ptq.json."""
    table = ptq_table(runs)
    if table is None:
        return []
    return ["## Post-training quantization vs BitNet training", "",
            "The same question answered two ways: quantize a trained NeRF (`python ptq.py runs/exp1`), or train "
            "BitNeRF's ternary weights from the start (exp4).", "", table]
