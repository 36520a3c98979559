"""The torch.compile benchmark (``python -m benchmarks.compile``) in a dry run on the host's Python: dynamo's
``eager`` backend (tracing, no code generation), a 2-step run on a 4x4 latent; every figure is reported and
ConsistentID traces as the plain UNet does."""
import json
import math
import subprocess
from pathlib import Path

import pytest
from dev_env import comfyui_path, host_python

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.host


def test_compile_benchmark_dry_run_reports_every_figure(tmp_path):
    out = tmp_path / "compile.json"
    command = [str(host_python()), "-m", "benchmarks.compile", "--comfyui", str(comfyui_path()), "--backend", "eager",
               "--latent", "4x4", "--steps", "2", "--rounds", "1", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    report = json.loads(out.read_text())
    assert report["settings"] | {"backend": "eager", "latent": [4, 4], "steps": 2} == report["settings"]
    for name in ("plain", "consistentid"):
        row = report[name]
        assert all(math.isfinite(row[k]) and row[k] > 0 for k in ("eager_forward_s", "compiled_forward_s"))
        assert math.isfinite(row["compile_s"])
        # One graph for the UNet, no break, no recompile over the run's steps nor for a second identity.
        assert row["first_run"] == {"graphs": 1, "graph_breaks": 0, "recompiles": 0}, row["recompile_reasons"]
        assert row["second_identity_run"] == {"graphs": 0, "graph_breaks": 0, "recompiles": 0}
    assert report["compiled_ratio"] > 0 and report["goal"]["applies"] is False
    assert "ratio ConsistentID / plain: eager" in done.stdout and "not applicable to this run" in done.stdout
