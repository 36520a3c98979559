"""The product runs on Python 3.10, the ``requires-python`` of pyproject.toml: vermin finds no construct or
standard-library member of a later Python in the pack's code (``hashlib.file_digest`` was one)."""
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ["__init__.py", "nodes", "consistentid_core", "client"]


def _vermin() -> str:
    return shutil.which("vermin", path=str(Path(sys.executable).parent)) or "vermin"


def test_requires_python_is_3_10():
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"] == ">=3.10"


def test_the_product_needs_nothing_newer_than_python_3_10(tmp_path):
    done = subprocess.run([_vermin(), "-q", "--no-tips", "--violations", "-t=3.10-", *PRODUCT], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    # The check itself: the call this replaced is reported.
    newer = tmp_path / "newer.py"
    newer.write_text("import hashlib\n\ndef f(fp):\n    return hashlib.file_digest(fp, 'sha256')\n")
    done = subprocess.run([_vermin(), "-q", "--no-tips", "--violations", "-t=3.10-", str(newer)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "hashlib.file_digest" in done.stdout
