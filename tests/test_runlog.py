import csv
import json
import struct
import time
from dataclasses import replace
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import write_scene

import configs
import hw_eval
import ptq
import runlog
import train
from utils import UserError

# W&B's transaction log (run-<id>.wandb): a 7-byte file header, then LevelDB-log records in 32 KiB blocks, each
# chunk with a 7-byte header (checksum, length, kind: 1 full, 2 first, 3 middle, 4 last) and a protobuf Record.
BLOCK, HEADER, FULL, LAST = 32768, 7, 1, 4


def wandb_records(path: Path):
    """Every Record in one .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # too little room for a chunk header: the block's padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0:
            break
        pending += data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def finished_records(folder: Path, timeout_s: float = 60.0) -> list:
    """The records of an offline run's .wandb file once they end with its exit record: W&B's service process
    can write the file after run.finish() has returned."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = list(wandb_records(next(folder.glob("run-*.wandb"))))
        if (records and records[-1].WhichOneof("record_type") == "exit") or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def offline_pieces(run_dir: Path) -> list[tuple[Path, list]]:
    """(offline run folder, its records) for each offline W&B run W&B wrote in the run directory, oldest first."""
    return [(folder, finished_records(folder)) for folder in sorted((run_dir / "wandb").glob("offline-run-*"))]


def of_type(records, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def items(record) -> dict:
    """A history or summary record's entries, keyed by their '/'-joined key, with JSON values."""
    entries = record.item if hasattr(record, "item") else record.update
    return {"/".join(e.nested_key) or e.key: json.loads(e.value_json) for e in entries}


def summary_of(records) -> dict:
    summary = {}
    for record in of_type(records, "summary"):
        summary.update(items(record))
    return summary


def read_table(folder: Path, summary: dict, key: str) -> list[dict]:
    """A W&B Table the summary points to, as one dict per row."""
    path = summary[key]["path"] if key in summary else summary[f"{key}/path"]  # set whole, or logged field by field
    table = json.loads((folder / "files" / path).read_text())
    return [dict(zip(table["columns"], row)) for row in table["data"]]


@pytest.fixture
def no_wandb_env(monkeypatch, tmp_path):
    """No W&B settings from this machine: no WANDB_MODE or key, an empty home and no netrc."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "NETRC", "WANDB_RUN_GROUP", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_auto_follows_wandb_mode_then_a_key_in_the_environment_or_netrc(no_wandb_env, monkeypatch, tmp_path):
    assert runlog.wandb_mode("auto") == "offline"
    netrc = tmp_path / "home" / ".netrc"
    netrc.parent.mkdir()
    netrc.write_text("machine example.com login user password secret\n")
    assert runlog.wandb_mode("auto") == "offline"  # credentials for another host only
    netrc.write_text("machine api.wandb.ai login user password secret\n")  # as `wandb login` writes it
    assert runlog.wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")  # a W&B server of one's own
    assert runlog.wandb_mode("auto") == "offline"
    monkeypatch.setenv("NETRC", str(tmp_path / "other_netrc"))
    (tmp_path / "other_netrc").write_text("machine wandb.example.com login user password secret\n")
    assert runlog.wandb_mode("auto") == "online"
    monkeypatch.delenv("WANDB_BASE_URL")
    assert runlog.wandb_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    assert runlog.wandb_mode("auto") == "online"
    for env, mode in (("disabled", "disabled"), ("dryrun", "offline"), ("offline", "offline"), ("online", "online")):
        monkeypatch.setenv("WANDB_MODE", env)
        assert runlog.wandb_mode("auto") == mode
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert runlog.wandb_mode("online") == "online" and runlog.wandb_mode("disabled") == "disabled"  # explicit wins
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(UserError, match="WANDB_MODE='sometimes'") as error:
        runlog.wandb_mode("auto")
    assert "\n" not in str(error.value)


# A run small enough to train in seconds that still logs twice, evaluates, checkpoints and renders a frame.
TINY_LOGGED = dict(
    depth=2,
    width=32,
    n_coarse=8,
    n_fine=8,
    steps=20,
    batch_rays=64,
    log_every=10,
    eval_every=10,
    ckpt_every=20,
    video_frames=1,
    eval_views=1,
    compile="off",
)


def test_an_offline_run_logs_against_rays_seen_and_ptq_and_hw_eval_join_its_wandb_run(
    no_wandb_env, monkeypatch, tmp_path
):
    scene = write_scene(tmp_path / "scene.npz", n=6, size=16)
    config = replace(configs.QUICK, data=str(scene), out=str(tmp_path / "runs"), wandb="offline", **TINY_LOGGED)
    train.run(config)
    run_dir = Path(config.out) / config.name
    wandb_id = torch.load(run_dir / "checkpoint.pt", weights_only=False)["wandb_id"]
    [(folder, records)] = offline_pieces(run_dir)
    [run] = of_type(records, "run")
    assert run.run_id == wandb_id and json.loads((run_dir / "wandb_run.json").read_text())["id"] == wandb_id
    assert list(run.tags) == ["preset:quick", "precision:fp32", "model:nerf", "world_size:1", "scene:scene"]
    assert run.run_group == "exp1"  # the experiment: its seeds (--seeds) would share it

    # The dashboard's x-axis: rays seen, defined for every train/ and test/ metric and logged with each row.
    metrics = {m.glob_name or m.name: m.step_metric for m in of_type(records, "metric")}
    assert metrics["rays_seen"] == "" and metrics["train/*"] == metrics["test/*"] == "rays_seen"
    rows = [items(h) for h in of_type(records, "history")]
    logged = [r for r in rows if any(k.startswith(("train/", "test/")) for k in r)]
    assert [r["_step"] for r in logged] == [10, 20]
    assert all(r["rays_seen"] == r["_step"] * 64 for r in logged)
    assert "train/loss" in logged[1] and "test/psnr" in logged[0] and "test/render/path" in logged[0]
    with open(run_dir / "metrics.csv", newline="") as f:
        assert [int(r["rays_seen"]) for r in csv.DictReader(f)] == [640, 1280]

    # The first test view's render beside its ground truth: [ground truth | render].
    truth_and_render = iio.imread(folder / "files" / logged[0]["test/render/path"])
    truth = iio.imread(sorted((run_dir / "renders").glob("gt_*.png"))[0])
    assert truth_and_render.shape == (16, 32, 3) and np.array_equal(truth_and_render[:, :16], truth)
    assert not np.array_equal(truth_and_render[:, 16:], truth)

    summary = summary_of(records)
    layers = json.loads((run_dir / "layers.json").read_text())["layers"]
    table = read_table(folder, summary, "layers")
    assert [r["name"] for r in table] == [layer["name"] for layer in layers]
    columns = ("in_features", "out_features", "weight_bits", "input_bits", "input_sparsity", "weight_density")
    assert [[r[c] for c in columns] for r in table] == [[layer[c] for c in columns] for layer in layers]

    # ptq.py and hw_eval.py add their results to the same W&B run, each in an offline piece of its own.
    ptq.main([str(run_dir), "--variants", "fp32", "fp16", "--device", "cpu"])
    hw_rows = [
        {
            "run": config.name,
            "arch": arch,
            "design": design,
            "energy_per_frame_j": 1e-3 * i,
            "latency_per_frame_s": 1e-2 * i,
            "edp_j_s": 1e-5 * i * i,
            "macs_per_frame": 7,
        }
        for i, (arch, design) in enumerate([("eyeriss", "dense"), ("eyeriss", "skipping"), ("tpu_v4i", "dense")])
    ]
    assert hw_eval.add_to_wandb_runs(Path(config.out), hw_rows) == {config.name: wandb_id}
    pieces = offline_pieces(run_dir)
    assert [[run.run_id for run in of_type(records, "run")] for _, records in pieces] == [[wandb_id]] * 3
    (ptq_folder, ptq_records), (hw_folder, hw_records) = pieces[1:]
    ptq_summary, ptq_rows = summary_of(ptq_records), json.loads((run_dir / "ptq.json").read_text())
    for row in ptq_rows:
        for key in ("psnr_test", "ssim_test", "weight_bits", "model_bytes"):
            assert ptq_summary[f"ptq/{row['variant']}/{key}"] == row[key]
    assert [r["variant"] for r in read_table(ptq_folder, ptq_summary, "ptq/results")] == ["fp32", "fp16"]
    hw_summary = summary_of(hw_records)
    assert hw_summary["hw_eval/eyeriss/skipping/energy_per_frame_j"] == 1e-3
    assert hw_summary["hw_eval/tpu_v4i/dense/latency_per_frame_s"] == 2e-2
    assert [(r["arch"], r["design"], r["edp_j_s"]) for r in read_table(hw_folder, hw_summary, "hw_eval/results")] == [
        (r["arch"], r["design"], r["edp_j_s"]) for r in hw_rows
    ]

    # WANDB_MODE=disabled now: nothing is added.
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert hw_eval.add_to_wandb_runs(Path(config.out), hw_rows) == {}
    assert len(offline_pieces(run_dir)) == 3


def test_a_run_without_wandb_records_none_and_gets_nothing_added(trained_runs):
    assert not (trained_runs / "nerf" / "wandb_run.json").exists() and not (trained_runs / "nerf" / "wandb").exists()
    assert (
        runlog.add_to_run(
            trained_runs / "nerf", "ptq", [{"variant": "fp32", "psnr_test": 1.0}], ("variant",), ("psnr_test",)
        )
        is None
    )


def test_metrics_csv_columns_have_their_w_and_b_names():
    assert [runlog.wandb_key(c) for c in ("rays_seen", "psnr_test", "psnr_val", "loss")] == [
        "rays_seen",
        "test/psnr",
        "val/psnr",
        "train/loss",
    ]
    assert "val/*" in runlog.LOGGED_AGAINST_RAYS  # validation PSNR against rays seen too
