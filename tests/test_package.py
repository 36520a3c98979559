"""The registry package: the archive the Comfy Registry builds from this checkout (comfy-cli's `comfy node pack`:
the git-tracked files less `.comfyignore`), its pre-publish check, a node-pack scanner's findings on it, the
metadata the registry and ComfyUI-Manager show, and the publish workflow."""
import ast
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from consistentid_core import dino
from consistentid_core.checkpoint import DOWNLOAD, RELEASE_FILES

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
WORKFLOW = REPO / ".github" / "workflows" / "publish.yml"
RAW = "https://raw.githubusercontent.com/consistentid-comfy/ComfyUI-ConsistentID/main/"
# Folders and files that are no part of the product: tests and their data, generators, benchmarks, CI.
NOT_PRODUCT = re.compile(r"(tests|weightgen|benchmarks|\.ci|\.github)/|requirements-dev\.txt$|\.comfyignore$"
                         r"|docs/development\.md$")
PRODUCT = ["__init__.py", "pyproject.toml", "requirements.txt", "LICENSE", "README.md", "nodes/", "consistentid_core/",
           "web/js/", "web/js/docs/", "locales/en/nodeDefs.json", "example_workflows/", "example_workflows/api/",
           "client/", "docs/method.md", "docs/headless.md"]

# The scanner's findings on the archive that are accepted, each with its reason; any other fails the test.
ACCEPTED = [
    {"category": "network_call", "file": "client/comfy_server.py",
     "reason": "the headless clients' one connection module: it talks to the user's own ComfyUI servers at the URLs "
               "given (default 127.0.0.1)"},
    {"category": "network_call", "file": "docs/headless.md",
     "reason": "a documented example client posting to the user's own ComfyUI"},
    {"category": "unsafe_deserialization", "file": "consistentid_core/tensor_files.py",
     "reason": "imports pickle's UnpicklingError only to catch the refusal of a pickled weight file; nothing is "
               "unpickled"},
    {"category": "dynamic_attribute_access", "file": "nodes/managed.py",
     "reason": "getattr with a constant attribute name: the host ModelPatcher kept on the pack's own module"},
    {"category": "code_obfuscation_high_entropy", "file": "*",
     "reason": "English text (docstrings, tooltips, messages) scores above the scanner's 4.5 bits/char; accepted "
               "only where the literal is prose, see _is_prose"},
]
MODEL_HOSTS = re.compile(r"https://(huggingface\.co|github\.com|dl\.fbaipublicfiles\.com)/\S+")


def report(config, text: str) -> None:
    """Into the test run's output, passed or failed (CI shows what the registry would get)."""
    with config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        config.pluginmanager.getplugin("terminalreporter").write_line(text)


@pytest.fixture(scope="module")
def archive(tmp_path_factory, pytestconfig) -> Path:
    """The archive as the registry builds it, unpacked; its file list goes into the test output."""
    zip_path = REPO / "node.zip"
    assert not zip_path.exists(), f"{zip_path} is in the way: remove it"
    comfy(["node", "pack"], REPO)
    target = tmp_path_factory.mktemp("archive")
    try:
        with zipfile.ZipFile(zip_path) as packed:
            names = sorted(packed.namelist())
            packed.extractall(target)
    finally:
        zip_path.unlink()
    report(pytestconfig, f"\nregistry archive (comfy node pack, {len(names)} files):\n  " + "\n  ".join(names))
    return target


def comfy(arguments: list[str], cwd: Path) -> str:
    # No prompt (first-run tracking question) and no telemetry: CI has neither a terminal nor the internet.
    done = subprocess.run([str(BIN / "comfy"), "--skip-prompt", "--no-enable-telemetry", *arguments], cwd=cwd,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr  # its results go to stderr when stdout is no terminal


def _files(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file())


def test_archive_holds_the_product_only(archive):
    files = _files(archive)
    assert not [name for name in files if NOT_PRODUCT.match(name)]
    assert not [name for name in files if name.endswith((".pyc", ".zip")) or "__pycache__" in name]
    missing = [entry for entry in PRODUCT
               if not (archive / entry).is_file() and not any(name.startswith(entry) for name in files)]
    assert not missing


def test_registry_validation_passes_on_the_archive(archive, pytestconfig):
    out = comfy(["node", "validate"], archive)
    report(pytestconfig, f"\ncomfy node validate on the archive:\n{out}")
    assert "Security warnings found" not in out
    assert "All validation checks passed" in out


def _literal(file: Path, line: int, length: int) -> str:
    found = [node.value for node in ast.walk(ast.parse(file.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.lineno == line
             and len(node.value) == length]
    assert found, f"no {length}-character string literal at {file}:{line}"
    return found[0]


def _is_prose(text: str) -> bool:
    """Words, not an encoded payload: no whitespace-free run longer than a file name (the model download URLs
    left out), and at least 40 % of the words plain lower-case words."""
    tokens = MODEL_HOSTS.sub("URL", text).split()
    plain = sum(bool(re.fullmatch(r"\W*[A-Za-z][a-z']*\W*", token)) for token in tokens)
    return max(map(len, tokens)) <= 48 and plain >= 0.4 * len(tokens)


def _accepted(finding: dict, archive: Path) -> bool:
    for rule in ACCEPTED:
        if rule["category"] != finding["category"] or rule["file"] not in ("*", finding["file"]):
            continue
        if finding["category"] != "code_obfuscation_high_entropy":
            return True
        length = int(re.search(r"\((\d+) chars", finding["title"]).group(1))
        return _is_prose(_literal(archive / finding["file"], finding["line"], length))
    return False


def test_scanner_findings_on_the_archive_are_fixed_or_accepted(archive, pytestconfig):
    done = subprocess.run([str(BIN / "nodesafe"), "scan", "--format", "json", str(archive)],
                          capture_output=True, text=True)
    scan = json.loads(done.stdout)
    findings = scan["findings"]
    lines = [f"\nnodesafe {scan['scanner']['version']} on the archive: verdict {scan['verdict']['label']} "
             f"(score {scan['verdict']['score']}), {len(findings)} findings"]
    for rule in ACCEPTED:
        count = sum(f["category"] == rule["category"] and rule["file"] in ("*", f["file"]) for f in findings)
        lines.append(f"  accepted: {count} {rule['category']} in {rule['file']}: {rule['reason']}")
    report(pytestconfig, "\n".join(lines))
    rejected = [f"{f['file']}:{f['line']} {f['severity']} {f['category']}: {f['title']} ({f.get('snippet', '')})"
                for f in findings if not _accepted(f, archive)]
    assert not rejected, "\n".join(rejected)


def test_prose_rule_rejects_an_encoded_payload():
    payload = "aW1wb3J0IG9zOyBvcy5zeXN0ZW0oJ2N1cmwgaHR0cDovL2V4YW1wbGUuY29tL3guc2ggfCBzaCcp" * 2
    assert not _is_prose(payload)
    assert not _is_prose("weakref.WeakValueDictionary[tuple[str, float], torch.nn.Module]")
    assert _is_prose("Load CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors (the IP-Adapter SD1.5 image encoder) with "
                     "ComfyUI's Load CLIP Vision and connect it here.")


def test_models_list_every_release_file_the_nodes_load():
    models = {entry["location"]: entry["model_url"] for entry in PYPROJECT["tool"]["comfy"]["Models"]}
    repo_file = f"{DOWNLOAD}/resolve/main/"
    assert models == {
        f"/consistentid/{RELEASE_FILES['sd15']}": repo_file + RELEASE_FILES["sd15"],
        f"/consistentid/{RELEASE_FILES['sdxl']}": repo_file + RELEASE_FILES["sdxl"],
        "/face_parsing/face_parsing.pth": repo_file + "face_parsing.pth",
        "/clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors":
            "https://huggingface.co/h94/IP-Adapter/resolve/main/models/image_encoder/model.safetensors",
        "/insightface/models/buffalo_l.zip":
            "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
        f"/dino/{dino.RELEASE_FILE}": dino.DOWNLOAD,
    }
    readme = (REPO / "README.md").read_text()
    assert all(Path(location).name.removesuffix(".zip") in readme for location in models)


def test_project_urls_and_icon():
    urls = PYPROJECT["project"]["urls"]
    repository = urls["Repository"]
    # The keys comfy-cli publishes: Issues is the registry's bug tracker link.
    assert urls["Issues"] == f"{repository}/issues" and urls["Documentation"].startswith(repository)
    icon = PYPROJECT["tool"]["comfy"]["Icon"]
    assert icon.startswith(RAW)
    path = REPO / icon.removeprefix(RAW)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width == image.height >= 128
    assert path.stat().st_size < 100_000


def _workflow() -> dict:
    # YAML 1.1 reads the key "on" as True.
    return yaml.safe_load(WORKFLOW.read_text())


def test_publish_workflow_runs_the_registry_action_on_a_push_to_main_that_touches_pyproject():
    workflow = _workflow()
    assert workflow[True] == {"push": {"branches": ["main"], "paths": ["pyproject.toml"]}}
    steps = workflow["jobs"]["publish"]["steps"]
    publish = steps[-1]
    assert publish["uses"].startswith("Comfy-Org/publish-node-action@")
    assert publish["if"] == "steps.version.outputs.changed == 'true'"
    assert publish["with"] == {"personal_access_token": "${{ secrets.REGISTRY_ACCESS_TOKEN }}"}
    # Secrets by name only: the token's name is the one thing of it in the file.
    assert re.findall(r"secrets\.\w+", WORKFLOW.read_text()) == ["secrets.REGISTRY_ACCESS_TOKEN"]


def _commit(repo: Path, version: str) -> str:
    text = (REPO / "pyproject.toml").read_text()
    (repo / "pyproject.toml").write_text(text.replace(f'version = "{PYPROJECT["project"]["version"]}"',
                                                      f'version = "{version}"', 1))
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", version], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("before, after, changed", [("0.1.0", "0.1.1", "true"), ("0.1.0", "0.1.0", "false")])
def test_publish_workflow_publishes_only_a_new_version(tmp_path, before, after, changed):
    step = next(s for s in _workflow()["jobs"]["publish"]["steps"] if s.get("id") == "version")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    first = _commit(tmp_path, before)
    (tmp_path / "README.md").write_text("another change")  # the push's other changes do not matter
    _commit(tmp_path, after)
    output = tmp_path / "github_output"
    done = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "BEFORE": first, "GITHUB_OUTPUT": str(output)})
    assert done.returncode == 0, done.stderr
    assert output.read_text() == f"changed={changed}\n"
    assert f"project.version {after}: {'changed' if changed == 'true' else 'unchanged'}" in done.stdout


def test_publish_workflow_publishes_the_first_version_of_a_new_branch(tmp_path):
    step = next(s for s in _workflow()["jobs"]["publish"]["steps"] if s.get("id") == "version")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    _commit(tmp_path, "0.1.0")
    output = tmp_path / "github_output"
    subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tmp_path, check=True, capture_output=True,
                   env={**os.environ, "BEFORE": "0" * 40, "GITHUB_OUTPUT": str(output)})
    assert output.read_text() == "changed=true\n"


def test_version_is_semantic_and_the_policy_is_documented():
    assert re.fullmatch(r"\d+\.\d+\.\d+", PYPROJECT["project"]["version"])
    policy = (REPO / "docs" / "versioning.md").read_text()
    assert "minor" in policy and "patch" in policy and "pyproject.toml" in policy


def test_every_comfyignore_rule_names_a_path_of_the_checkout():
    # A rule left behind by a rename would silently match nothing.
    patterns = [line.strip() for line in (REPO / ".comfyignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert [pattern for pattern in patterns if not (REPO / pattern.strip("/")).exists()] == []
