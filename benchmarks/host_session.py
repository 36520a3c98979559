"""A ComfyUI host inside this process: its own ``PromptExecutor`` and node cache, driven as ``main.py``'s
``prompt_worker`` drives them, with probes that time what the executor runs.

The host's cache decides what re-runs, exactly as on a server; a stand-in for the ``PromptServer``
records the executor's messages, whose timestamps give each node's wall time.
"""
import asyncio
import inspect
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# The pack's functions timed inside its nodes: module -> {name: stage}.
STAGES = {
    "nodes.face_nodes": {"parse_labels": "face_parsing", "face_regions": "region_masks",
                         "region_pixels": "region_pixels", "encode_penultimate": "clip_regions"},
    "nodes.identity_nodes": {"face_ids": "insightface", "encode_penultimate": "clip_whole_image",
                             "encode_identity": "projection"},
    "nodes.apply_nodes": {"apply_to_model": "patch_model"},
    "nodes.encoder_nodes": {"facial_conditioning": "facial_encoder"},
}
FACE_ANALYSIS = ("face_parsing", "insightface", "clip_regions", "clip_whole_image", "projection")


def start_host(comfyui: Path, base_dir: Path, repo: Path, cpu: bool):
    """Import the host at ``comfyui`` with ``base_dir`` as its base directory and load the pack at ``repo``;
    returns the host's ``execution`` module."""
    sys.path.insert(0, str(comfyui))
    from comfy.cli_args import args

    args.base_directory = str(base_dir)
    args.cpu = cpu
    import execution
    import nodes

    if not asyncio.run(nodes.load_custom_node(str(repo))):
        raise RuntimeError(f"ComfyUI could not load the pack at {repo}; see the log above")
    return execution


class Recorder:
    """The executor's view of the server: it keeps every message with the time it was sent."""

    client_id = None
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}

    def __init__(self):
        self.events: list[tuple[float, str, dict]] = []

    def send_sync(self, event, data, sid=None):
        self.events.append((time.perf_counter(), event, data))

    def node_running(self) -> str | None:
        for _, event, data in reversed(self.events):
            if event == "executing":
                return data.get("node")
        return None


@dataclass
class QueueResult:
    label: str
    wall_s: float
    executed: list[str]
    cached: list[str]
    node_s: dict[str, float]
    stages: dict[str, list[float]] = field(default_factory=dict)
    loads: list[dict] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        return {"label": self.label, "wall_s": self.wall_s, "executed": self.executed, "cached": self.cached,
                "node_s": self.node_s, "stage_s": {k: sum(v) for k, v in self.stages.items()},
                "model_loads": self.loads, "step_s": _intervals(self.step_times)}


def _intervals(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def classic_executor(execution, server):
    """The host's ``PromptExecutor`` with the classic cache (``--cache-classic``), on which the benchmark relies:
    it keeps every node's output while the node stays in the graph, so the one graph of three samplers keeps
    each branch cached and a queue re-runs only what changed. Newer hosts default to the RAM-pressure cache,
    which may drop outputs when free RAM runs low, so what re-runs would depend on the machine."""
    if "cache_args" in inspect.signature(execution.PromptExecutor).parameters:
        # ~0.15 on (0.28.0): each queue reads cache_args["ram"] and ["ram_inactive"] whatever the cache type;
        # main.py passes 0 for both with --cache-classic.
        return execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC,
                                        cache_args={"lru": 0, "ram": 0, "ram_inactive": 0})
    # 0.3.64: cache_size, read by the LRU cache alone.
    return execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC)


class HostSession:
    """Queues API-format prompts one after another on one executor, as the server's worker does."""

    def __init__(self, execution, repo: Path):
        import comfy.model_management

        self.execution = execution
        self.server = Recorder()
        self.executor = classic_executor(execution, self.server)
        self.mm = comfy.model_management
        self._current: QueueResult | None = None
        self._count = 0
        self._instrument(repo)

    def _instrument(self, repo: Path) -> None:
        import latent_preview

        package = next(name for name, module in sys.modules.items()
                       if Path(getattr(module, "__file__", "") or "/").resolve() == repo / "__init__.py")
        for module_name, names in STAGES.items():
            module = sys.modules[f"{package}.{module_name}"]
            for name, stage in names.items():
                setattr(module, name, self._timed(getattr(module, name), stage))
        self.mm.load_models_gpu = self._timed_load(self.mm.load_models_gpu)
        latent_preview.prepare_callback = self._timed_steps(latent_preview.prepare_callback)

    def _timed(self, function, stage: str):
        def timed(*args, **kwargs):
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                if self._current is not None:
                    self._current.stages.setdefault(stage, []).append(time.perf_counter() - began)
        return timed

    def _timed_load(self, load):
        def timed(models, *args, **kwargs):
            began = time.perf_counter()
            try:
                return load(models, *args, **kwargs)
            finally:
                if self._current is not None:
                    self._current.loads.append({
                        "node": self.server.node_running(), "models": [type(m.model).__name__ for m in models],
                        "weight_patches": sum(len(getattr(m, "patches", {})) for m in models),
                        "s": time.perf_counter() - began})
        return timed

    def _timed_steps(self, prepare_callback):
        """``prepare_callback`` with a clock in the callback it makes: the host's samplers get their per-step
        callback from it (``nodes.common_ksampler``, SamplerCustom) and the k-diffusion loop calls that once after
        every step. The progress bar it drives is no clock: newer hosts (0.28.0) send only some of its updates."""
        def prepare(*args, **kwargs):
            callback = prepare_callback(*args, **kwargs)

            def timed(*step_args, **step_kwargs):
                if self._current is not None:
                    self._current.step_times.append(time.perf_counter())
                return callback(*step_args, **step_kwargs)
            return timed
        return prepare

    def queue(self, label: str, prompt: dict, outputs: list[str]) -> QueueResult:
        """Run ``prompt`` up to the nodes ``outputs`` and time what the host executed."""
        self._count += 1
        self.server.events.clear()
        self._current = result = QueueResult(label, 0.0, [], [], {})
        began = time.perf_counter()
        self.executor.execute(prompt, f"bench-{self._count}", {"client_id": "benchmark"}, outputs)
        result.wall_s = time.perf_counter() - began
        self._current = None
        if not self.executor.success:
            errors = [data for event, data in self.executor.status_messages if event == "execution_error"]
            detail = (f"node {errors[0]['node_id']} ({errors[0]['node_type']}): {errors[0]['exception_message']}"
                      if errors else self.executor.status_messages)
            raise RuntimeError(f"queue '{label}' failed: {detail}")
        self._read_events(result)
        return result

    def _read_events(self, result: QueueResult) -> None:
        starts = [(t, data["node"]) for t, event, data in self.server.events
                  if event == "executing" and data.get("node") is not None]
        end = next(t for t, event, _ in self.server.events if event == "execution_success")
        for (t, node), (t_next, _) in zip(starts, [*starts[1:], (end, None)]):
            result.node_s[node] = result.node_s.get(node, 0.0) + t_next - t
        result.executed = list(result.node_s)
        result.cached = next(data["nodes"] for _, event, data in self.server.events if event == "execution_cached")


def mean_stages(results: list[QueueResult]) -> dict[str, float]:
    """Mean per queue of each stage's total time over ``results``."""
    totals = defaultdict(float)
    for result in results:
        for stage, times in result.stages.items():
            totals[stage] += sum(times)
    return {stage: total / len(results) for stage, total in totals.items()}
