"""Training under torch.distributed: two CPU processes on the gloo backend, launched by torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_two_process_training_run(tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    out = tmp_path / "w.pt"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", os.path.join(ROOT, "scripts", "train.py"),
           "--stage", "interaction", "--steps-interaction", "3", "--pool", "3", "--no-real", "--threads", "1",
           "--workdir", str(tmp_path / "work"), "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "[rank 0/2]" in r.stdout + r.stderr
    state = torch.load(out, weights_only=True)
    assert state["meta"]["processes"] == 2
    ck = torch.load(tmp_path / "work" / "interaction.ckpt", weights_only=False)
    assert ck["step"] == 3
