"""The developer environment: set-up and the whole test run (standard library only, runs before any venv).

    python3 tests/dev_env.py setup   # .venv for the unit tests, and a ComfyUI host (idempotent)
    python3 tests/dev_env.py test    # every test: unit + golden + server in .venv, in-process in the host

The ComfyUI the host tests run against, first match wins:
1. ``COMFYUI_PATH``;
2. the ComfyUI this checkout sits in (cloned into ``ComfyUI/custom_nodes/``);
3. the source snapshot in ``../shared/host/``, unpacked into ``<cache>/host/``.

Its Python is ``COMFYUI_PYTHON`` if set, else the venv ``<cache>/host/venv`` that ``setup`` makes once
(torch 2.14.1 + torchvision 0.29.1, the host's requirements + ``requests``, this pack's requirements and the
test tools) and updates only when one of those requirement files changes. ``<cache>`` is
``CONSISTENTID_TEST_CACHE`` (default ``~/.cache/consistentid-tests``), outside the checkout; the generated
host models are cached there too.
"""
import hashlib
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEV_VENV = REPO / ".venv"
HOST_TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
SNAPSHOTS = {"ComfyUI": "ComfyUI-*.tar.gz", "ComfyUI_IPAdapter_plus": "ComfyUI_IPAdapter_plus-*.tar.gz"}
IN_PROCESS = "tests/host_inprocess"
# Modules that need most memory each get a Python of their own, so that no process exceeds CI's 10 GB: those that
# hold a full-size UNet of their own (SDXL: ~9 GB; the official-loop UNet built from its state dict: ~7 GB), and
# the IPAdapter_plus stacking (~9 GB: IPAdapter_plus's CLIP encodes keep several GB on a CPU).
OWN_PROCESS = ["tests/host_inprocess/test_sdxl.py", "tests/host_inprocess/test_official_sampling.py",
               "tests/host_inprocess/test_with_ipadapter.py"]


class HostNotFound(RuntimeError):
    pass


def unavailable(reason: str):
    """For a test whose data or tool is missing: skip on a developer's machine, fail in CI."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def cache_dir() -> Path:
    return Path(os.environ.get("CONSISTENTID_TEST_CACHE", Path.home() / ".cache" / "consistentid-tests"))


def shared_dir() -> Path:
    return Path(os.environ.get("CONSISTENTID_SHARED", REPO.parent / "shared"))


def _is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir()


def _snapshot_dir(name: str) -> Path:
    return cache_dir() / "host" / name


def comfyui_path() -> Path:
    if os.environ.get("COMFYUI_PATH"):
        path = Path(os.environ["COMFYUI_PATH"])
        if not _is_comfyui(path):
            raise HostNotFound(f"COMFYUI_PATH={path} is not a ComfyUI checkout (no main.py and comfy/ there).")
        return path
    if REPO.parent.name == "custom_nodes" and _is_comfyui(REPO.parent.parent):
        return REPO.parent.parent
    path = _snapshot_dir("ComfyUI")
    if not _is_comfyui(path):
        raise HostNotFound(f"No ComfyUI found: COMFYUI_PATH is unset, this checkout is not inside "
                           f"ComfyUI/custom_nodes/, and {path} has not been unpacked. "
                           f"Run `python3 tests/dev_env.py setup` first.")
    return path


def ipadapter_plus_path() -> Path:
    """cubiq's ComfyUI_IPAdapter_plus, the neighbour pack the composability tests load beside this one."""
    path = _snapshot_dir("ComfyUI_IPAdapter_plus")
    if not (path / "IPAdapterPlus.py").is_file():
        raise HostNotFound(f"{path} has not been unpacked. Run `python3 tests/dev_env.py setup` first.")
    return path


def host_python() -> Path:
    if os.environ.get("COMFYUI_PYTHON"):
        return Path(os.environ["COMFYUI_PYTHON"])
    python = cache_dir() / "host" / "venv" / "bin" / "python"
    if not python.is_file():
        raise HostNotFound(f"The host venv {python.parent.parent} does not exist. "
                           f"Run `python3 tests/dev_env.py setup` first.")
    return python


def _unpack_snapshots() -> None:
    for name, pattern in SNAPSHOTS.items():
        target = _snapshot_dir(name)
        if target.exists():
            continue
        found = sorted((shared_dir() / "host").glob(pattern))
        if not found:
            raise HostNotFound(f"No {pattern} in {shared_dir() / 'host'} (set CONSISTENTID_SHARED).")
        partial = target.with_name(target.name + ".partial")
        with tarfile.open(found[-1]) as archive:
            archive.extractall(partial, filter="data")
        (partial / name).rename(target)
        partial.rmdir()


def _ensure_venv(venv: Path, requirement_files: list[Path], installs: list[list[str]]) -> None:
    """Create ``venv`` if needed and run ``installs`` (pip arguments) unless the files are unchanged."""
    digest = hashlib.sha256(repr(installs).encode())
    for path in requirement_files:
        digest.update(path.read_bytes())
    stamp_file = venv / "consistentid-stamp"
    if stamp_file.is_file() and stamp_file.read_text() == digest.hexdigest():
        return
    if not (venv / "bin" / "python").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    for arguments in installs:
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *arguments], check=True)
    stamp_file.write_text(digest.hexdigest())


def setup() -> None:
    requirements = REPO / "requirements-dev.txt"
    # open_clip_torch only for its CLIP BPE vocabulary: its dependencies would pull another torch.
    _ensure_venv(DEV_VENV, [requirements], [["-r", str(requirements)], ["--no-deps", "open_clip_torch==3.3.0"]])
    if (shared_dir() / "host").is_dir():
        _unpack_snapshots()
    comfyui = comfyui_path()
    if not os.environ.get("COMFYUI_PYTHON"):
        files = [comfyui / "requirements.txt", REPO / "requirements.txt", REPO / "tests" / "requirements-host.txt"]
        # The host's requirements name torch/torchvision/torchaudio unpinned: the pins keep the versions.
        _ensure_venv(cache_dir() / "host" / "venv", files,
                     [HOST_TORCH, [*HOST_TORCH, "requests", *(a for f in files for a in ("-r", str(f)))]])
    print(f"host: ComfyUI {comfyui}, Python {host_python()}")


SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def run_tests(extra: list[str]) -> int:
    """Every suite, each with its own pytest summary, then one total line."""
    suites = [("unit, golden and server tests (.venv)", [str(DEV_VENV / "bin" / "python"), "-m", "pytest",
                                                         f"--ignore={IN_PROCESS}", *extra]),
              ("in-process host tests (host Python)", [str(host_python()), "-m", "pytest", IN_PROCESS,
                                                       *(f"--ignore={path}" for path in OWN_PROCESS), *extra]),
              *((f"in-process {Path(path).stem} (host Python)", [str(host_python()), "-m", "pytest", path, *extra])
                for path in OWN_PROCESS)]
    totals: dict[str, int] = {}
    codes = []
    for title, command in suites:
        print(f"\n===== {title}: {' '.join(command)}", flush=True)
        last = ""
        with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True) as run:
            for line in run.stdout:
                sys.stdout.write(line)
                last = line if line.strip() else last
        # 5: no test selected in this suite (e.g. `-k golden` selects none of the in-process tests).
        codes.append(0 if run.returncode == 5 else run.returncode)
        for count, kind in SUMMARY.findall(last):
            kind = "errors" if kind.startswith("error") else kind
            totals[kind] = totals.get(kind, 0) + int(count)
    failed = totals.get("failed", 0) + totals.get("errors", 0)
    print(f"\n{totals.get('deselected', 0)} deselected (by default only the benchmark smoke; `-m benchmark` runs it)")
    print(f"total: {totals.get('passed', 0)} passed, {failed} failed, {totals.get('skipped', 0)} skipped")
    return max(codes)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    try:
        if command == "setup":
            setup()
        elif command == "test":
            sys.exit(run_tests(sys.argv[2:]))
        elif command == "python":
            print(host_python())
        else:
            sys.exit(f"usage: {sys.argv[0]} setup|test [pytest args]|python")
    except HostNotFound as err:
        sys.exit(str(err))
