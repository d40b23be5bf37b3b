"""examples/python/ddp_train.py: 2 processes with gloo on the CPU end with the parameters of one
process trained on the combined batch."""

import os
import subprocess
import sys

from conftest import ROOT

EXAMPLE = os.path.join(ROOT, "examples", "python", "ddp_train.py")


def run(*args):
    r = subprocess.run([sys.executable, EXAMPLE, *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_ddp_equals_single_process(tmp_path):
    out = run("--check", "--steps", "4", "--world-size", "2", "--dtype", "float64",
              "--save", str(tmp_path / "m.safetensors"))
    assert "rank 0/2" in out and "rank 1/2" in out and ": OK" in out, out
    assert (tmp_path / "m.safetensors").exists()
