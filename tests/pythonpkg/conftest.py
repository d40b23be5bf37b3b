"""Shared by the radargate package's tests (run by scripts/test-python with pytest).

RADARGATE_CLI names the `radargate` command-line tool the tests compare against; the tests that
need it fail (never skip) without it. scripts/python/ holds the independent eager PyTorch maths
(radargate_torch.py) and a NumPy safetensors reader and writer (safetensors_np.py).
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts", "python"))

# variant -> extra options of the fresh model; every variant, and every option of the rotating ones.
CASES = [
    ("sum", {}),
    ("uniform", {}),
    ("static", {}),
    ("softmax", {}),
    ("softmax", {"normalize": "sigmoid", "tau": 0.7}),
    ("topk", {}),
    ("topk", {"topk": 1}),
    ("stretch_only", {}),
    ("stretch_only", {"normalize": "identity"}),
    ("rotation_only", {}),
    ("rotation_only", {"map": "mean", "bound": "none", "pairing": "half"}),
    ("radargate", {}),
    ("radargate", {"pairing": "half", "planes": 2, "angle_rank": 3}),
    ("radargate", {"normalize": "topk_softmax", "topk": 2, "map": "mean"}),
]


def case_id(case):
    variant, opts = case
    return variant + "".join(f"-{k}={v}" for k, v in opts.items())


@pytest.fixture(scope="session")
def cli():
    path = os.environ.get("RADARGATE_CLI", "")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(f"RADARGATE_CLI: expected the path of the radargate tool (scripts/test-python sets it), "
                    f"found {path!r}")
    return path


def run_cli(cli, *args):
    """Runs the tool; returns stdout, or fails the test with its stderr."""
    r = subprocess.run([cli, *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"radargate {' '.join(map(str, args))}: exit {r.returncode}: {r.stderr.strip()}")
    return r.stdout
