"""The benchmark in its smoke mode (64x64, 2 steps) on the host's Python: every figure is reported, and
the host's cache re-runs no face analysis when only the prompt or the seed changes."""
import json
import math
import statistics
import subprocess
from pathlib import Path

import pytest
from dev_env import comfyui_path, host_python

REPO = Path(__file__).resolve().parents[2]

# Several minutes on 2 CPU cores: the default test command deselects it; `pytest -m benchmark` runs it.
pytestmark = [pytest.mark.host, pytest.mark.benchmark]
FACE_ANALYSIS_STAGES = {"face_parsing", "insightface", "clip_regions", "clip_whole_image", "projection"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark") / "smoke.json"
    command = [str(host_python()), "benchmarks/run.py", "--comfyui", str(comfyui_path()), "--smoke", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return json.loads(out.read_text()), done.stdout


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_benchmark_reports_every_figure(smoke):
    report, printed = smoke
    assert report["settings"] | {"mode": "smoke", "width": 64, "height": 64, "steps": 2} == report["settings"]
    assert {"cpu", "cores", "torch", "onnxruntime", "comfyui", "device"} <= set(report["machine"])

    for phase in ("cold", "warm"):
        stages = report["preprocessing"][phase]["stages_s"]
        assert FACE_ANALYSIS_STAGES | {"facial_encoder"} <= set(stages)
        assert all(_positive(stages[s]) for s in FACE_ANALYSIS_STAGES | {"facial_encoder"})
        assert set(report["preprocessing"][phase]["nodes_s"]) == {"parse", "regions", "identity", "encode", "apply"}
    assert _positive(report["preprocessing"]["warm_per_image_s"])

    operators = report["operators_per_unet_forward"]
    assert operators["id_weight_0"]["kernels"] == operators["plain"]["kernels"] > 500
    assert 0 < operators["extra_kernels_per_cross_attention"] <= 4
    assert "ops/forward consistentid: kernel-launching" in printed
    # Where the host patches weights in the forward, the LoRA costs kernels on every step.
    in_forward = operators["patched_in_forward"]
    assert in_forward["lora_kernels"] == in_forward["id_weight_0"]["kernels"] - in_forward["plain"]["kernels"] > 0
    assert "LoRA patched in forward: kernels/forward" in printed

    sampler = report["sampler"]
    for name in ("plain", "consistentid", "id_attention_only"):
        assert _positive(sampler[name]["step_s"]) and _positive(sampler[name]["sampler_node_s"])
        assert sampler[name]["runs"] == 2
    for ratio in ("ratio", "id_attention_ratio", "lora_per_step_ratio"):
        assert _positive(sampler[ratio])
    # Rounds alternate the samplers under the same machine load: the ratio is the median of per-round ratios.
    per_round = zip(sampler["plain"]["step_s_per_run"], sampler["consistentid"]["step_s_per_run"])
    assert sampler["ratio"] == pytest.approx(statistics.median(cid / plain for plain, cid in per_round))

    lora = report["lora_patch"]
    assert _positive(lora["lora_model_load_s"]) and math.isfinite(lora["patch_s"])
    memory = report["memory"]
    assert _positive(memory["peak_rss_plain_mb"])
    assert memory["peak_rss_consistentid_mb"] >= memory["peak_rss_plain_mb"]
    assert "second queue (new prompt) ran: " in printed and "sampler ratio ConsistentID / plain" in printed


def test_benchmark_measures_each_queue_from_the_host_cache(smoke):
    report, _ = smoke
    queues = {q["label"]: q for q in report["queues"]}
    assert set(queues["plain warm-up"]["executed"]) == {"ckpt", "pos", "neg", "latent", "sampler_plain"}
    cold = queues["consistentid cold"]
    assert {"image", "parse", "regions", "identity", "encode", "apply", "merge_apply",
            "sampler_cid"} <= set(cold["executed"])
    assert FACE_ANALYSIS_STAGES <= set(cold["stage_s"])
    assert set(queues["preprocessing warm 1"]["executed"]) == {"image", "parse", "regions", "identity", "encode",
                                                                "apply"}
    assert set(queues["warm-up on the new image"]["executed"]) == {"merge_apply", "sampler_cid", "apply_id",
                                                                   "merge_apply_id", "sampler_id"}
    # Timed rounds alternate the three samplers; from the second round on, a queue runs its sampler alone
    # (the first may re-run a merge step scheduler whose steps changed since the warm-up). Steps 2..N are timed.
    samplers = {"plain": "sampler_plain", "consistentid": "sampler_cid", "id_attention_only": "sampler_id"}
    for key, sampler in samplers.items():
        assert set(queues[f"{key} seed 1"]["executed"]) <= {sampler, "merge_apply", "merge_apply_id"}
        assert queues[f"{key} seed 2"]["executed"] == [sampler]
        assert len(queues[f"{key} seed 1"]["step_s"]) == len(queues[f"{key} seed 2"]["step_s"]) == 1


def test_benchmark_second_queue_recomputes_no_face_analysis(smoke):
    report, _ = smoke
    second = report["second_queue"]
    assert set(second["executed"]) == {"encode", "merge_apply", "sampler_cid"}
    assert {"image", "parse", "regions", "identity", "apply", "vision", "insightface", "parser",
            "cid"} <= set(second["cached"])
    assert second["face_analysis_reran"] == [] and second["stages_run"] == ["facial_encoder"]
    assert report["seed_only_queue"] == {"executed": ["sampler_cid"], "face_analysis_reran": []}
    assert report["targets"]["prompt_change_reruns_no_face_analysis"]
    assert report["targets"]["seed_change_reruns_only_sampler"]
