"""Project rules that code review would otherwise have to catch: the core is host-free, the generator CLI works."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST_MODULES = {"comfy", "comfy_api", "comfy_execution", "comfy_extras", "folder_paths", "nodes", "server",
                "execution", "latent_preview", "node_helpers"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_imports_nothing_from_the_host():
    offenders = {path.name: sorted(_imported_roots(path) & HOST_MODULES)
                 for path in sorted((REPO / "consistentid_core").glob("*.py"))}
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_core_imports_without_a_host_on_the_path():
    code = ("import importlib, pkgutil, sys, consistentid_core\n"
            "for m in pkgutil.iter_modules(consistentid_core.__path__):\n"
            "    importlib.import_module('consistentid_core.' + m.name)\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in %r]\n" % (HOST_MODULES,))
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_generator_cli_writes_every_unit_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "weightgen", str(tmp_path), "--size", "unit"], cwd=REPO,
                         check=True, capture_output=True, text=True).stdout
    expected = {
        "consistentid/ConsistentID-v1-unit.bin", "consistentid/ConsistentID-v1-unit.safetensors",
        "consistentid/ConsistentID_SDXL-v1-unit.bin",
        "face_parsing/face_parsing.pth", "face_parsing/parsing_bisenet.pth",
        "insightface/models/buffalo_l/det_10g.onnx", "insightface/models/buffalo_l/w600k_r50.onnx",
        "insightface/models/buffalo_l_noface/det_10g.onnx", "insightface/models/buffalo_l_noface/w600k_r50.onnx",
        "dino/dino_deitsmall16_pretrain.pth",
    }
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert written == expected
    for name in expected:
        assert str(tmp_path / name) in out or str((tmp_path / name).parent) in out
