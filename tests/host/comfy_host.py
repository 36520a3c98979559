"""A real ComfyUI, started headless on 127.0.0.1 with this pack in its ``custom_nodes/``.

Everything the server reads or writes (custom_nodes, models, input, output, temp, user) lives
under one ``--base-directory``, so the ComfyUI checkout itself stays untouched.
"""
import json
import os
import tempfile
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import websocket
from dev_env import comfyui_path, host_python, ipadapter_plus_path
from host_facts import CLASSIC_CACHE_ARGS

REPO = Path(__file__).resolve().parents[2]
PACK_DIR_NAME = "ComfyUI-ConsistentID"
PACK_MODULE = f"custom_nodes.{PACK_DIR_NAME}"


class HostError(Exception):
    """A prompt the host refused (HTTP 400 validation) or that failed while executing."""

    def __init__(self, message: str, node_id: str | None = None, node_type: str | None = None):
        self.message = message
        self.node_id = node_id
        self.node_type = node_type
        super().__init__(f"node {node_id} ({node_type}): {message}" if node_id else message)


def host_model_files(python: str, comfyui_path: Path) -> dict[str, Path]:
    """The cached SD1.5 and CLIP-ViT-H files, generated on first use by a Python that imports the host."""
    code = ("import json, sys\nfrom weightgen.host_models import cached_host_models\n"
            "print(json.dumps({k: str(v) for k, v in cached_host_models(None, sys.argv[1]).items()}))")
    done = subprocess.run([python, "-c", code, str(comfyui_path)], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"generating the host model files failed:\n{done.stderr[-4000:]}")
    return {name: Path(path) for name, path in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def write_pack_models(models_dir: Path) -> dict[str, Path]:
    """Run the weight generators into ``models_dir``: the pack's files (ConsistentID at full size) and an
    IP-Adapter for the neighbour pack."""
    from weightgen import bisenet, consistentid, dino, insightface_pack, ipadapter

    return {**consistentid.write_checkpoints(models_dir, size="full"), **bisenet.write_face_parsers(models_dir),
            **insightface_pack.write_packs(models_dir), **ipadapter.write_ipadapter(models_dir),
            **dino.write_dino(models_dir)}

def link(target: Path, link_path: Path) -> None:
    link_path.parent.mkdir(parents=True, exist_ok=True)
    link_path.symlink_to(target)


@contextmanager
def scratch_server():
    """A started ComfyServer of the host ``tests/dev_env.py`` finds, in a temporary base directory: what the
    generator scripts read the nodes from."""
    with tempfile.TemporaryDirectory() as base:
        server = ComfyServer(comfyui_path(), str(host_python()), base)
        server.start()
        try:
            yield server
        finally:
            server.stop()


class ComfyServer:
    def __init__(self, comfyui_path: Path, python: str, base_dir: Path):
        self.comfyui_path = Path(comfyui_path)
        self.python = python
        self.base_dir = Path(base_dir)
        self.models_dir = self.base_dir / "models"
        self.input_dir = self.base_dir / "input"
        self.output_dir = self.base_dir / "output"
        self.temp_dir = self.base_dir / "temp"
        self.log_path = self.base_dir / "comfyui.log"
        self.port = _free_port()
        self.client_id = uuid.uuid4().hex
        self.process: subprocess.Popen | None = None
        self.startup_s: float | None = None
        self.model_files: dict[str, Path] = {}
        self.events = WebSocketEvents()

    def prepare_models(self, host_files: dict[str, Path]) -> None:
        """Link the cached host models and generate the pack's own model files under ``models/``."""
        for path in host_files.values():
            link(path, self.models_dir / path.parent.name / path.name)
        self.model_files = write_pack_models(self.models_dir)
        self.model_files.update(host_files)

    def start(self, timeout: float = 120.0, args: tuple[str, ...] = ()) -> None:
        """Start the server; ``args`` go to ``main.py`` after the test settings (e.g. ``--front-end-root``)."""
        link(REPO, self.base_dir / "custom_nodes" / PACK_DIR_NAME)
        # The most used neighbour pack, which patches the same attention layers, loads beside this one.
        link(ipadapter_plus_path(), self.base_dir / "custom_nodes" / ipadapter_plus_path().name)
        self.input_dir.mkdir(parents=True, exist_ok=True)
        (self.base_dir / "user").mkdir(exist_ok=True)
        # The database is the one thing --base-directory does not move out of the checkout. The UNet and
        # ControlNet weights are kept in fp16, as on a GPU (computed in fp32 on the CPU): in fp32 the ControlNet
        # workflow holds 10.9 GB, over CI's 10 GB budget; in fp16, 7.1 GB. The tests of what a prompt reuses rely
        # on the classic node cache, which every host is told to run.
        command = [self.python, "main.py", "--cpu", "--fp16-unet", "--listen", "127.0.0.1",
                   "--port", str(self.port), "--base-directory", str(self.base_dir),
                   "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}", *CLASSIC_CACHE_ARGS, *args]
        began = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=self.comfyui_path, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        while time.monotonic() - began < timeout:
            self._check_alive()
            try:
                self.get("/system_stats")
                self.startup_s = time.monotonic() - began
                self.events.listen(self.port, self.client_id)
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer /system_stats within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=60) as reply:
            return json.load(reply)

    def post(self, path: str, payload: dict):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            body = reply.read()
        return json.loads(body) if body else None

    def image_file(self, image: dict) -> Path:
        """Where an image of a history entry's ``outputs`` (``filename``, ``subfolder``, ``type``) lies."""
        folder = {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}[image["type"]]
        return folder / image["subfolder"] / image["filename"]

    def version(self) -> str:
        return self.get("/system_stats")["system"]["comfyui_version"]

    def object_info(self) -> dict:
        return self.get("/object_info")

    def pack_nodes(self) -> dict:
        """``/object_info`` entries of the nodes whose class comes from this pack."""
        return {name: info for name, info in self.object_info().items() if info.get("python_module") == PACK_MODULE}

    def queue(self, prompt_api: dict, timeout: float = 600.0) -> dict:
        """Run an API-format prompt to the end: its history entry (``outputs``, ``status``), plus ``prompt_id``
        and ``events``, the websocket messages of this prompt as ``(arrival time, type, data)``."""
        try:
            prompt_id = self.post("/prompt", {"prompt": prompt_api, "client_id": self.client_id})["prompt_id"]
        except urllib.error.HTTPError as err:
            raise _validation_error(json.loads(err.read() or b"{}")) from None
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry["status"].get("status_str") == "error":
                raise _execution_error(entry["status"]["messages"])
            if entry and entry["status"].get("completed"):
                return {**entry, "prompt_id": prompt_id, "events": self.events.of_prompt(prompt_id)}
            self._check_alive()
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def free(self) -> None:
        """Unload the models and drop every cached node output, so the next prompt starts cold."""
        self.post("/free", {"unload_models": True, "free_memory": True})
        # The worker applies the flags when it wakes up; a prompt queued before that would run first.
        time.sleep(1.0)

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with code {self.process.returncode}:\n{self.log_tail()}")


class WebSocketEvents:
    """The server's ``/ws`` messages for one client, each stamped with its arrival time."""

    def __init__(self):
        self._messages: list[tuple[float, str, dict]] = []
        self._lock = threading.Lock()

    def listen(self, port: int, client_id: str) -> None:
        connection = websocket.create_connection(f"ws://127.0.0.1:{port}/ws?clientId={client_id}", timeout=30)
        connection.settimeout(None)
        threading.Thread(target=self._read, args=(connection,), daemon=True).start()

    def _read(self, connection) -> None:
        while True:
            try:
                message = connection.recv()
            except (websocket.WebSocketConnectionClosedException, OSError):
                return
            if isinstance(message, str):  # binary frames are preview images
                message = json.loads(message)
                with self._lock:
                    self._messages.append((time.monotonic(), message["type"], message.get("data") or {}))

    def of_prompt(self, prompt_id: str, timeout: float = 10.0) -> list[tuple[float, str, dict]]:
        """This prompt's messages, once its last one (``executing`` of no node, or an error) has arrived."""
        began = time.monotonic()
        while True:
            with self._lock:
                ours = [m for m in self._messages if m[2].get("prompt_id") == prompt_id]
            if any(kind == "execution_error" or (kind == "executing" and data.get("node") is None)
                   for _, kind, data in ours) or time.monotonic() - began > timeout:
                return ours
            time.sleep(0.05)


def executed_nodes(events: list) -> list[str]:
    """Ids of the nodes that ran (cached ones send no ``executing``), expanded ones included, in order."""
    return [data["node"] for _, kind, data in events if kind == "executing" and data.get("node") is not None]


def cached_nodes(entry: dict) -> list[str]:
    """Ids of the prompt's nodes whose outputs the host reused (its ``execution_cached`` message)."""
    messages = entry["status"]["messages"]
    return [node for event, data in messages if event == "execution_cached" for node in data["nodes"]]


def node_seconds(events: list) -> dict[str, float]:
    """Wall time of each node that ran: from its ``executing`` message to the next one."""
    starts = [(t, data.get("node")) for t, kind, data in events if kind == "executing"]
    return {node: round(end - start, 3) for (start, node), (end, _) in zip(starts, starts[1:]) if node is not None}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _validation_error(body: dict) -> HostError:
    for node_id, node in body.get("node_errors", {}).items():
        message = "; ".join(f"{e['message']}: {e.get('details', '')}" for e in node["errors"])
        return HostError(message, node_id, node.get("class_type"))
    error = body.get("error", {})
    return HostError(f"{error.get('message', body)} {error.get('details', '')}".strip())


def _execution_error(messages: list) -> HostError:
    for event, data in messages:
        if event == "execution_error":
            return HostError(f"{data['exception_type']}: {data['exception_message']}", str(data["node_id"]),
                             data["node_type"])
    return HostError(f"the prompt failed without an execution_error message: {messages}")
