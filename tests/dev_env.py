"""The developer environment: set-up and the whole test run (standard library only, runs before any venv).

    python3 tests/dev_env.py setup   # .venv for the unit tests, and the ComfyUI hosts (idempotent)
    python3 tests/dev_env.py test    # every test: unit + golden once, then every host test on each host

The hosts the host tests run on, first match wins:
1. ``COMFYUI_PATH`` (a developer's own ComfyUI);
2. the ComfyUI this checkout sits in (cloned into ``ComfyUI/custom_nodes/``);
3. two source snapshots from ``../shared/host/``: the oldest ComfyUI the pack supports (:data:`FLOOR`) and the
   newest snapshot there, each unpacked into ``<cache>/host/<version>/ComfyUI``.

A host's Python is ``COMFYUI_PYTHON`` if set, else a venv that ``setup`` makes once per host (a snapshot's
beside it in ``<cache>/host/<version>/venv``, a developer's ComfyUI's in ``<cache>/host/venv``: torch 2.14.1 +
torchvision 0.29.1, the host's requirements + ``requests``, this pack's requirements and the test tools) and
updates only when one of those requirement files changes. ``<cache>`` is ``CONSISTENTID_TEST_CACHE`` (default
``~/.cache/consistentid-tests``), outside the checkout; the generated host models are cached there too, shared
by the hosts. The test run hands each host to its suites as ``COMFYUI_PATH`` and ``COMFYUI_PYTHON``, so a
single pytest run with those two set tests that host alone.
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEV_VENV = REPO / ".venv"
HOST_TORCH = ["torch==2.14.1", "torchvision==0.29.1"]
# The insightface many existing installs still have (the last one built from source); pip resolves a newer,
# pure-Python one today. Its venv lays it over .venv's packages, and the face-ID tests run once more with it.
OLD_INSIGHTFACE = "0.7.3"
OLD_INSIGHTFACE_TESTS = ["tests/test_face_id.py", "tests/test_insightface_version.py"]
FLOOR = "0.3.64"  # the oldest ComfyUI the pack supports (pyproject.toml's requires-comfyui)
# The other packs the stacking tests load beside this one, unpacked into <cache>/host/<name>.
NEIGHBOURS = {"ComfyUI_IPAdapter_plus": "ComfyUI_IPAdapter_plus-*.tar.gz",
              "ComfyUI_InstantID": "ComfyUI_InstantID-*.tar.gz"}
HOST_SNAPSHOT = re.compile(r"ComfyUI-(\d+)\.(\d+)\.(\d+)-[0-9a-f]+\.tar\.gz")
IN_PROCESS = "tests/host_inprocess"
BROWSER = "tests/browser"
# The frontend the browser tests open beside the host's pinned one: the newest at the time of writing, served with
# --front-end-root from <cache>/frontend/<version>.
NEW_FRONTEND = "1.58.1"
# Modules that need most memory each get a Python of their own, so that no process exceeds CI's 10 GB: those that
# hold a full-size UNet of their own (SDXL: ~9 GB; the official-loop UNet built from its state dict: ~7 GB; SDXL with
# InstantID: ~7.6 GB), the IPAdapter_plus stacking (~9 GB: IPAdapter_plus's CLIP encodes keep several GB on a CPU), and
# the torch.compile tests (~5.9 GB; their dynamo state and attention choice stay out of the other modules).
OWN_PROCESS = ["tests/host_inprocess/test_sdxl.py", "tests/host_inprocess/test_official_sampling.py",
               "tests/host_inprocess/test_with_ipadapter.py", "tests/host_inprocess/test_with_instantid.py",
               "tests/host_inprocess/test_compile.py"]


# Server tests run on the newest host only: the batch client's two servers at once take both memory slots and
# test the client, which is the same on every host; the compile benchmark's dry run checks the command, while the
# compile tests themselves run on every host.
NEWEST_ONLY = ["tests/host/test_batch_client.py", "tests/host/test_compile_benchmark.py"]


class HostNotFound(RuntimeError):
    pass


@dataclass(frozen=True)
class Host:
    """A ComfyUI the host tests run on, and the Python that runs it."""
    path: Path
    python: Path

    @property
    def version(self) -> str:
        found = re.search(r'__version__\s*=\s*"([^"]+)"', (self.path / "comfyui_version.py").read_text())
        return found.group(1) if found else "unknown version"

    @property
    def title(self) -> str:
        return f"ComfyUI {self.version}"


def unavailable(reason: str):
    """For a test whose data or tool is missing: skip on a developer's machine, fail in CI."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def cache_dir() -> Path:
    return Path(os.environ.get("CONSISTENTID_TEST_CACHE", Path.home() / ".cache" / "consistentid-tests"))


def frontend_root(version: str) -> Path:
    """The static files of ``comfyui-frontend-package`` ``version`` that ``setup`` installed."""
    root = cache_dir() / "frontend" / version / "comfyui_frontend_package" / "static"
    if not (root / "index.html").is_file():
        raise HostNotFound(f"Frontend {version} is not installed in {root}. Run `python3 tests/dev_env.py setup` first.")
    return root


def _install_browser_tools() -> None:
    """Debian's Chromium for the browser tests (never a downloaded browser), and the new frontend's files."""
    if not shutil.which("chromium"):
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True)
    target = cache_dir() / "frontend" / NEW_FRONTEND
    if not (target / "comfyui_frontend_package" / "static" / "index.html").is_file():
        subprocess.run([str(DEV_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--target",
                        str(target), f"comfyui-frontend-package=={NEW_FRONTEND}"], check=True)


def shared_dir() -> Path:
    return Path(os.environ.get("CONSISTENTID_SHARED", REPO.parent / "shared"))


def _is_comfyui(path: Path) -> bool:
    return (path / "main.py").is_file() and (path / "comfy").is_dir()


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _host_snapshots() -> dict[str, Path]:
    """The snapshots to test on, by version: the floor and the newest in ``../shared/host/``."""
    found = {".".join(m.groups()): path for path in (shared_dir() / "host").glob("ComfyUI-*.tar.gz")
             if (m := HOST_SNAPSHOT.fullmatch(path.name))}
    if FLOOR not in found:
        raise HostNotFound(f"No ComfyUI-{FLOOR}-*.tar.gz in {shared_dir() / 'host'} (set CONSISTENTID_SHARED).")
    newest = max(found, key=_version_key)
    return {version: found[version] for version in sorted({FLOOR, newest}, key=_version_key)}


def _snapshot_root(version: str) -> Path:
    return cache_dir() / "host" / version


def _own_comfyui() -> Path | None:
    """A developer's ComfyUI: ``COMFYUI_PATH``, or the one this checkout is cloned into."""
    if os.environ.get("COMFYUI_PATH"):
        path = Path(os.environ["COMFYUI_PATH"])
        if not _is_comfyui(path):
            raise HostNotFound(f"COMFYUI_PATH={path} is not a ComfyUI checkout (no main.py and comfy/ there).")
        return path
    if REPO.parent.name == "custom_nodes" and _is_comfyui(REPO.parent.parent):
        return REPO.parent.parent
    return None


def _venv_of(comfyui: Path) -> Path:
    if comfyui.parent.parent == cache_dir() / "host":
        return comfyui.parent / "venv"
    return cache_dir() / "host" / "venv"


def _python_of(comfyui: Path) -> Path:
    if os.environ.get("COMFYUI_PYTHON"):
        return Path(os.environ["COMFYUI_PYTHON"])
    return _venv_of(comfyui) / "bin" / "python"


def hosts_under_test() -> list[Host]:
    """Every host the test run covers, oldest first."""
    own = _own_comfyui()
    if own is not None:
        return [Host(own, _python_of(own))]
    paths = [_snapshot_root(version) / "ComfyUI" for version in _host_snapshots()]
    for path in paths:
        if not _is_comfyui(path):
            raise HostNotFound(f"No ComfyUI found: COMFYUI_PATH is unset, this checkout is not inside "
                               f"ComfyUI/custom_nodes/, and {path} has not been unpacked. "
                               f"Run `python3 tests/dev_env.py setup` first.")
    return [Host(path, _python_of(path)) for path in paths]


def comfyui_path() -> Path:
    """The host of this test session: the run sets ``COMFYUI_PATH`` per host; a bare pytest gets the floor."""
    return _own_comfyui() or hosts_under_test()[0].path


def host_python() -> Path:
    python = _python_of(comfyui_path())
    if not python.is_file():
        raise HostNotFound(f"The host venv {python.parent.parent} does not exist. "
                           f"Run `python3 tests/dev_env.py setup` first.")
    return python


def neighbour_path(name: str) -> Path:
    """One of :data:`NEIGHBOURS`, the packs the stacking tests load beside this one."""
    path = cache_dir() / "host" / name
    if not path.is_dir():
        raise HostNotFound(f"{path} has not been unpacked. Run `python3 tests/dev_env.py setup` first.")
    return path


def ipadapter_plus_path() -> Path:
    """cubiq's ComfyUI_IPAdapter_plus, the neighbour pack the composability tests load beside this one."""
    return neighbour_path("ComfyUI_IPAdapter_plus")


def _unpack(archive_path: Path, member: str, target: Path) -> None:
    if target.exists():
        return
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(archive_path) as archive:
        archive.extractall(partial, filter="data")
    (partial / member).rename(target)
    partial.rmdir()


def _unpack_snapshots() -> None:
    for version, archive in _host_snapshots().items():
        _snapshot_root(version).mkdir(parents=True, exist_ok=True)
        _unpack(archive, "ComfyUI", _snapshot_root(version) / "ComfyUI")
    for name, pattern in NEIGHBOURS.items():
        found = sorted((shared_dir() / "host").glob(pattern))
        if not found:
            raise HostNotFound(f"No {pattern} in {shared_dir() / 'host'} (set CONSISTENTID_SHARED).")
        _unpack(found[-1], name, cache_dir() / "host" / name)


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


def old_insightface_venv() -> Path:
    return cache_dir() / f"insightface-{OLD_INSIGHTFACE}"


def _overlay_old_insightface() -> None:
    venv = old_insightface_venv()
    if not (venv / "bin" / "python").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    own = subprocess.run([str(venv / "bin" / "python"), "-c", purelib], capture_output=True, text=True, check=True)
    dev = subprocess.run([str(DEV_VENV / "bin" / "python"), "-c", purelib], capture_output=True, text=True,
                         check=True)
    # Its own site-packages come first on sys.path, so its insightface (and what only it needs) shadows .venv's.
    (Path(own.stdout.strip()) / "consistentid_dev_venv.pth").write_text(dev.stdout)
    _ensure_venv(venv, [], [[f"insightface=={OLD_INSIGHTFACE}"]])


def setup() -> None:
    requirements = REPO / "requirements-dev.txt"
    # open_clip_torch only for its CLIP BPE vocabulary: its dependencies would pull another torch.
    _ensure_venv(DEV_VENV, [requirements], [["-r", str(requirements)], ["--no-deps", "open_clip_torch==3.3.0"]])
    _overlay_old_insightface()
    _install_browser_tools()
    if (shared_dir() / "host").is_dir():
        _unpack_snapshots()
    for host in hosts_under_test():
        if not os.environ.get("COMFYUI_PYTHON"):
            files = [host.path / "requirements.txt", REPO / "requirements.txt",
                     REPO / "tests" / "requirements-host.txt"]
            # The host's requirements name torch/torchvision/torchaudio unpinned: the pins keep the versions.
            _ensure_venv(_venv_of(host.path), files,
                         [HOST_TORCH, [*HOST_TORCH, "requests", *(a for f in files for a in ("-r", str(f)))]])
        print(f"host: {host.title} at {host.path}, Python {host.python}")


SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)")


def _suites(extra: list[str]) -> list[tuple[str, str, dict[str, str], list[str]]]:
    """(group, title, environment, command) of every pytest session: the host-free tests once, then each host's,
    grouped by host."""
    pytest = [str(DEV_VENV / "bin" / "python"), "-m", "pytest"]
    suites = [("host-free", "unit and golden tests (.venv)", {},
               [*pytest, "--ignore=tests/host", f"--ignore={IN_PROCESS}", f"--ignore={BROWSER}", *extra]),
              ("host-free", f"face-ID tests with insightface {OLD_INSIGHTFACE}",
               {"CONSISTENTID_INSIGHTFACE": OLD_INSIGHTFACE},
               [str(old_insightface_venv() / "bin" / "python"), "-m", "pytest", *OLD_INSIGHTFACE_TESTS, *extra])]
    hosts = hosts_under_test()
    for index, host in enumerate(hosts):
        env = {"COMFYUI_PATH": str(host.path), "COMFYUI_PYTHON": str(host.python)}
        in_host = [str(host.python), "-m", "pytest"]
        newest_only = [] if host == hosts[-1] else [f"--ignore={path}" for path in NEWEST_ONLY]
        commands = [("server tests (.venv)", [*pytest, "tests/host", *newest_only, *extra]),
                    ("in-process host tests (host Python)",
                     [*in_host, IN_PROCESS, *(f"--ignore={path}" for path in OWN_PROCESS), *extra]),
                    *((f"in-process {Path(path).stem} (host Python)", [*in_host, path, *extra])
                      for path in OWN_PROCESS),
                    # once, on the floor host: its pinned frontend and NEW_FRONTEND cover the frontends users have
                    *([("browser tests (.venv)", [*pytest, BROWSER, *extra])] if index == 0 else [])]
        suites += [(host.title, f"{host.title}: {title}", env, command) for title, command in commands]
    return suites


def _line(totals: dict[str, int]) -> str:
    failed = totals.get("failed", 0) + totals.get("errors", 0)
    return f"{totals.get('passed', 0)} passed, {failed} failed, {totals.get('skipped', 0)} skipped"


def run_tests(extra: list[str]) -> int:
    """Every suite, each with its own pytest summary, then a line per host and one total line."""
    totals: dict[str, dict[str, int]] = {}
    codes = []
    for group, title, env, command in _suites(extra):
        print(f"\n===== {title}: {' '.join(command)}", flush=True)
        last = ""
        with subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, **env}) as run:
            for line in run.stdout:
                sys.stdout.write(line)
                last = line if line.strip() else last
        # 5: no test selected in this suite (e.g. `-k golden` selects none of the in-process tests).
        codes.append(0 if run.returncode == 5 else run.returncode)
        counts = totals.setdefault(group, {})
        for count, kind in SUMMARY.findall(last):
            kind = "errors" if kind.startswith("error") else kind
            counts[kind] = counts.get(kind, 0) + int(count)
    print()
    for group, counts in totals.items():
        print(f"{group} tests — {_line(counts)}")
    overall: dict[str, int] = {}
    for counts in totals.values():
        for kind, count in counts.items():
            overall[kind] = overall.get(kind, 0) + count
    print(f"{overall.get('deselected', 0)} deselected (by default only the benchmark smoke; `-m benchmark` runs it)")
    print(f"total: {_line(overall)}")
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
