"""Two CPU processes under torchrun (gloo): sharded data, synced weights, one set of outputs from rank 0."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from torch import nn
    from itcp_deploy.data import load_dataset, make_loader
    from itcp_deploy.train import TrainConfig, evaluate, train
    from itcp_deploy.train.distributed import shutdown

    torch.set_num_threads(1)
    out = sys.argv[1]
    spec = "synthetic:classes=4,size=16,train=128,test=50"
    train_info, test_info = load_dataset(spec, "train"), load_dataset(spec, "test")
    torch.manual_seed(int(os.environ["RANK"]))  # different init per rank: DDP must broadcast rank 0's
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    metrics = train(model, train_info, test_info, TrainConfig(epochs=1, batch_size=16, checkpoint_dir=out,
                                                               quiet=True))
    n_test = evaluate(model, make_loader(test_info, 16, shuffle=False))["n"]
    report = {"world_size": metrics["world_size"], "train_samples": metrics["history"][0]["train_samples"],
              "n_test": n_test, "weight_sum": float(model[5].weight.sum())}
    with open(os.path.join(os.path.dirname(out), f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(report, f)
    shutdown()
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "run"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root), "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), str(out)]
    try:
        proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail("torchrun with 2 CPU processes did not finish in 240 s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in reports)
    assert all(r["train_samples"] == 128 for r in reports)  # 4 steps x 16 x 2 ranks, summed over ranks
    assert all(r["n_test"] == 50 for r in reports)  # every test image counted once, none padded
    assert reports[0]["weight_sum"] == pytest.approx(reports[1]["weight_sum"], abs=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["epochs_completed"] == 1
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "checkpoint.pt", "metrics.json", "model.pt"]
