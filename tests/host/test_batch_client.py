"""The batch client on two real ComfyUI servers at once: jobs split over both, one killed mid-batch, a resumed
run, and an identity file sent with the job.

The second server shares the first one's model files except its identities folder, so the identity file reaches
it only as the client sends it. Run with both memory slots: ``HEAVY_SLOTS=2 heavy ...``.
"""
import csv
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from comfy_host import REPO, ComfyServer, HostError
from PIL import Image
from workflows import load_api

pytestmark = pytest.mark.host

BATCH = REPO / "client" / "consistentid_batch.py"
SEEDS, PROMPTS = [21, 22, 23], ["A man, in a forest", "A man, on a beach"]


def _client(name: str):
    sys.path.insert(0, str(REPO / "client"))
    return __import__(name)


@pytest.fixture(scope="module")
def servers(comfy_server, images_dir, tmp_path_factory):
    comfy_server.free()
    second = ComfyServer(comfy_server.comfyui_path, comfy_server.python, tmp_path_factory.mktemp("comfyui_b"))
    for folder in comfy_server.models_dir.iterdir():
        if folder.name != "consistentid_identities":
            (second.models_dir / folder.name).parent.mkdir(parents=True, exist_ok=True)
            (second.models_dir / folder.name).symlink_to(folder)
    second.start()
    try:
        yield comfy_server, second
    finally:
        second.stop()


@pytest.fixture(scope="module")
def identity_file(servers, images_dir, tmp_path_factory):
    """astronaut.png encoded once on the first server and saved as an identity file (in its models folder)."""
    first, _ = servers
    (first.input_dir / "astronaut.png").write_bytes((images_dir / "astronaut.png").read_bytes())
    basic = load_api("consistentid_sd15_basic")
    face = {key: basic[key] for key in ("2", "3", "4", "5", "6", "7", "8", "10")}
    face["6"]["inputs"]["image"] = "astronaut.png"
    face["20"] = {"class_type": "ConsistentIDSaveIdentity",
                  "inputs": {"identity": ["10", 0], "filename_prefix": "astro"}}
    first.queue(face)
    [saved] = (first.models_dir / "consistentid_identities").glob("astro_*.safetensors")
    return saved


@pytest.fixture(scope="module")
def manifest(identity_file, images_dir, servers, tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch")
    (folder / "astronaut.png").write_bytes((images_dir / "astronaut.png").read_bytes())
    (folder / "astro.safetensors").write_bytes(identity_file.read_bytes())
    path = folder / "manifest.json"
    path.write_text(json.dumps({
        "identities": {"photo": "astronaut.png", "file": {"file": "astro.safetensors", "photo": "astronaut.png"}},
        "defaults": {"steps": 2, "merge_step": 0, "width": 64, "height": 96,
                     "checkpoint": servers[0].model_files["sd15_checkpoint"].name},
        "rows": [{"prompts": PROMPTS, "seeds": SEEDS}, {"identity": "photo", "prompt": "A man", "seeds": [5],
                                                         "checkpoint": "missing.safetensors"}]}))
    return path


def _journal(out) -> list[dict]:
    path = out / "journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _command(manifest, out, *servers) -> list[str]:
    urls = [a for server in servers for a in ("--server", f"http://127.0.0.1:{server.port}")]
    return [sys.executable, str(BATCH), *([str(manifest)] if manifest else []), *urls, "--out", str(out),
            "--probe", "1", "--request-timeout", "10", "--poll", "0.2"]


@pytest.fixture(scope="module")
def killed_run(servers, manifest, tmp_path_factory):
    """The batch over both servers, the second one killed as soon as it has finished a job."""
    first, second = servers
    out = tmp_path_factory.mktemp("out")
    began = time.monotonic()
    run = subprocess.Popen(_command(manifest, out, first, second), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    second_url = f"http://127.0.0.1:{second.port}"
    while run.poll() is None and not any(r.get("server") == second_url and r["status"] == "done"
                                         for r in _journal(out)):
        time.sleep(0.2)
    second.process.kill()
    killed_after = len(_journal(out))
    stdout, stderr = run.communicate(timeout=600)
    wall = time.monotonic() - began
    return {"out": out, "rc": run.returncode, "stdout": stdout, "stderr": stderr, "wall": wall,
            "killed_after": killed_after, "urls": (f"http://127.0.0.1:{first.port}", second_url)}


def test_jobs_split_over_two_servers_and_a_killed_ones_finish_once_elsewhere(killed_run):
    first_url, second_url = killed_run["urls"]
    records = _journal(killed_run["out"])
    done = [r for r in records if r["status"] == "done"]
    failed = [r for r in records if r["status"] == "failed"]
    moved = [r for r in done if any(server == second_url and "server down" in what for server, what in r["tries"])]
    by_server = {url: sum(r["server"] == url for r in done) for url in (first_url, second_url)}
    print(f"batch: {len(done) + len(failed)} jobs on 2 servers in {killed_run['wall']:.1f} s; done per server "
          f"{by_server}; the killed server's unfinished jobs {len(moved)}, rerun on "
          f"{sorted({r['server'] for r in moved})}")
    print(killed_run["stderr"][-3000:])
    # 2 identities × 2 prompts × 3 seeds, and the bad row, the server's own message in its record.
    assert killed_run["rc"] == 2, killed_run["stderr"][-4000:]
    assert len(done) == 12 and len({r["job"] for r in done}) == 12
    assert len(failed) == 1 and "missing.safetensors" in failed[0]["message"] and "ckpt_name" in failed[0]["message"]
    assert "failed: photo row 2 seed 5: refused by" in killed_run["stderr"]
    assert by_server[second_url] >= 1 and by_server[first_url] >= 1
    assert moved and all(r["server"] == first_url for r in moved)
    for record in done:
        with Image.open(killed_run["out"] / record["image"]) as image:
            assert image.size == (64, 96)


def test_results_table_and_contact_sheets(killed_run):
    out = killed_run["out"]
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 13 and json.loads((out / "results.json").read_text())[0].keys() >= {"weight", "facesim"}
    done = [row for row in rows if row["status"] == "done"]
    assert {(row["identity"], row["prompt"], int(row["seed"])) for row in done} == {
        (identity, prompt, seed) for identity in ("photo", "file") for prompt in PROMPTS for seed in SEEDS}
    assert all(row["width"] == "64" and row["steps"] == "2" and -1 <= float(row["facesim"]) <= 1 for row in done)
    # The identity file holds exactly what the photo encodes to: the same image and score for the same settings.
    scores = {(row["identity"], row["prompt"], row["seed"]): row["facesim"] for row in done}
    assert all(scores[("file", p, s)] == scores[("photo", p, s)] for _, p, s in scores)
    for identity in ("photo", "file"):
        with Image.open(out / f"contact_{identity}.png") as sheet:
            assert sheet.size == (6 * 256, 290)
            pixels = np.asarray(sheet.convert("L"))
        assert (pixels[256:290] < 128).any()  # the captions under the images


def test_an_identity_file_sent_with_the_job_gives_the_image_of_the_models_folder_one(servers, killed_run,
                                                                                       identity_file):
    first, _ = servers
    job_workflow = _client("job_workflow")
    [record] = [r for r in _journal(killed_run["out"]) if r["identity"] == "file" and r["seed"] == SEEDS[0]
                and r["prompt"] == PROMPTS[0]]
    prompt, save, _ = job_workflow.build_prompt(load_api("consistentid_sd15_basic"), {"file": identity_file.name},
                                                {**record["settings"], "seed": record["seed"]})
    assert "ConsistentIDFaceEncode" not in {node["class_type"] for node in prompt.values()}
    [image] = first.queue(prompt)["outputs"][save]["images"]
    local = np.asarray(Image.open(first.image_file(image)).convert("RGB"))
    sent = np.asarray(Image.open(killed_run["out"] / record["image"]).convert("RGB"))
    print(f"identity file sent with the job ran on {record['server']}")
    assert np.array_equal(local, sent)


def test_an_uploaded_identity_keeps_the_checks_of_the_models_folder(servers, tmp_path):
    first, _ = servers
    comfy_server = _client("comfy_server")
    pickle = tmp_path / "evil.safetensors"
    pickle.write_bytes(b"\x80\x04\x95" + b"\0" * 64)  # a pickle's opening bytes under an identity file's name
    server = comfy_server.Server(f"http://127.0.0.1:{first.port}")
    server.upload(pickle, subfolder="consistentid_identities")
    basic = load_api("consistentid_sd15_basic")

    def load(name: str) -> dict:
        return {"2": basic["2"], "9": {"class_type": "ConsistentIDLoadIdentity",
                                       "inputs": {"consistentid": ["2", 0], "identity_name": name}},
                "10": {"class_type": "ConsistentIDSaveIdentity", "inputs": {"identity": ["9", 0],
                                                                            "filename_prefix": "copy"}}}

    with pytest.raises(HostError, match="'evil.safetensors' is not an identity file: it is not a safetensors file"):
        first.queue(load("evil.safetensors"))
    # A name is looked for in the two folders only: a path out of them is refused when the prompt is queued.
    with pytest.raises(HostError, match=r"Model file '\.\./astronaut\.png' was not found in \S+/models/"
                                        r"consistentid_identities or \S+/input/consistentid_identities\."):
        first.queue(load("../astronaut.png"))


def test_a_resumed_run_repeats_nothing(servers, killed_run):
    first, _ = servers
    before = len(_journal(killed_run["out"]))
    history = len(first.get("/history"))
    done = subprocess.run(_command(None, killed_run["out"], first), capture_output=True, text=True, timeout=300, check=False)
    # The bad row is the one job tried again, and refused again.
    assert "13 jobs, 12 finished before, 1 to run" in done.stderr, done.stderr[-3000:]
    assert len(_journal(killed_run["out"])) == before + 1 and len(first.get("/history")) == history
    assert done.returncode == 2


def test_ctrl_c_then_a_rerun_finishes_the_rest_once(servers, manifest, tmp_path):
    first, _ = servers
    small = tmp_path / "manifest.json"
    data = json.loads(manifest.read_text())
    data["identities"] = {"photo": str(manifest.parent / "astronaut.png")}
    # More jobs than can finish between the first journal line and the signal, however fast the machine.
    data["rows"] = [{"prompt": "A man, in a city", "seeds": list(range(31, 43))}]
    small.write_text(json.dumps(data))
    out = tmp_path / "out"
    run = subprocess.Popen(_command(small, out, first), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while run.poll() is None and not _journal(out):
        time.sleep(0.1)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    first_done = {r["job"] for r in _journal(out)}
    assert run.returncode == 130 and "run the same command again" in stderr, stderr[-3000:]
    assert 1 <= len(first_done) < 12
    again = subprocess.run(_command(small, out, first), capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"12 jobs, {len(first_done)} finished before" in again.stderr
    records = _journal(out)
    assert len(records) == 12 and len({r["job"] for r in records}) == 12
