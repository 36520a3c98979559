"""The UNet under torch.compile through the host's TorchCompileModel: plain SD1.5 and ConsistentID, eager and
compiled, on the full-size random SD1.5 checkpoint and ConsistentID adapter from ``weightgen``.

    python -m benchmarks.compile --comfyui PATH [--latent 8x8] [--steps 20] [--backend inductor] [--out FILE]

Reports, in one run: the UNet forward time (one euler step with CFG: one forward of batch 2) eager and compiled,
plain and ConsistentID, the compiled ratio ConsistentID / plain, the compile time (the first compiled run less an
eager run), and the graphs dynamo traced and its recompiles (its ``recompiles`` log) over a run of ``steps`` steps
with one identity, then the same run with a second identity through a TorchCompileModel of its own, as a re-queued
workflow gets. ``--backend`` takes any dynamo backend: ``inductor`` generates code (minutes on a CPU), ``eager``
traces only, for a quick check of the accounting.
"""
import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CPU_GOAL = 1.05  # compiled ConsistentID / compiled plain per forward, on a CPU


class DynamoLog:
    """Dynamo's own accounting: the graphs it compiled and the reasons it logged for each recompile."""

    def __init__(self):
        import torch

        self.torch = torch
        self.reasons: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: self.reasons.append(record.getMessage())
        torch._logging.set_logs(recompiles=True)
        logging.getLogger("torch._dynamo.guards.__recompiles").addHandler(handler)

    def snapshot(self) -> dict:
        from torch._dynamo.utils import counters

        return {"graphs": counters["stats"]["unique_graphs"], "graph_breaks": sum(counters["graph_break"].values()),
                "recompiles": len(self.reasons)}

    @staticmethod
    def since(before: dict, after: dict) -> dict:
        return {key: after[key] - before[key] for key in before}


def _pack_module(name: str):
    package = next(key for key, module in sys.modules.items()
                   if Path(getattr(module, "__file__", "") or "/").resolve() == REPO / "__init__.py")
    return sys.modules[f"{package}.{name}"]


def _start(comfyui: Path, base_dir: Path, cuda: bool):
    """The host with the pack loaded, its attention PyTorch's SDPA as on a GPU host: a CPU host's default
    sub-quadratic attention asks psutil for the free memory in every call, which breaks the graph 33 times."""
    from benchmarks.host_session import start_host

    sys.path.insert(0, str(comfyui))
    from comfy.cli_args import args

    args.use_pytorch_cross_attention = True
    start_host(comfyui, base_dir, REPO, cpu=not cuda)


def run(comfyui: Path, latent_hw: tuple[int, int], steps: int, rounds: int, backend: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="consistentid-compile-") as base_dir:
        return _run(comfyui, Path(base_dir), latent_hw, steps, rounds, backend)


def _run(comfyui: Path, base_dir: Path, latent_hw: tuple[int, int], steps: int, rounds: int, backend: str) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    _start(comfyui, base_dir, cuda)
    import comfy.sample
    import comfy.sd
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    from weightgen import consistentid
    from weightgen.host_models import cached_host_models

    checkpoint, unet_patch = _pack_module("consistentid_core.checkpoint"), _pack_module("nodes.unet_patch")
    files = cached_host_models(None, comfyui)
    began = time.perf_counter()
    adapter = consistentid.write_checkpoints(base_dir / "models")
    generate_s = time.perf_counter() - began
    base = comfy.sd.load_checkpoint_guess_config(str(files["sd15_checkpoint"]), output_vae=False,
                                                 output_clip=False)[0]
    weights = checkpoint.load_checkpoint(adapter["consistentid_sd15"])
    generator = torch.Generator().manual_seed(0)
    identities = [[torch.randn(1, 4, weights.cross_attention_dim, generator=generator) for _ in range(2)]
                  for _ in range(2)]
    context = [torch.randn(1, 77, weights.cross_attention_dim, generator=generator) for _ in range(2)]
    latent = torch.zeros(1, 4, *latent_hw)
    noise = torch.randn(latent.shape, generator=generator)

    def sample(model, n=steps) -> float:
        began = time.perf_counter()
        comfy.sample.sample(model, noise, n, 5.0, "euler", "normal", [[context[0], {}]], [[context[1], {}]],
                            latent, disable_pbar=True, seed=0)
        return time.perf_counter() - began

    def compiled(model):
        return TorchCompileModel.execute(model, backend).result[0]

    log = DynamoLog()
    models = {"plain": lambda identity: base,
              "consistentid": lambda identity: unet_patch.apply_to_model(base, weights, *identities[identity])}
    report = {"settings": {"latent": list(latent_hw), "steps": steps, "rounds": rounds, "backend": backend,
                           "device": "cuda" if cuda else "cpu", "torch": torch.__version__,
                           "threads": torch.get_num_threads()},
              "generate_adapter_s": generate_s}
    for name, make in models.items():
        torch._dynamo.reset()
        eager_model, compiled_model = make(0), compiled(make(0))
        sample(eager_model)  # loads the model (and merges the LoRA) outside the timings
        eager_first = sample(eager_model)
        before = log.snapshot()
        first = sample(compiled_model)
        first_run = DynamoLog.since(before, log.snapshot())
        eager_s, compiled_s = [], []
        for _ in range(rounds):  # alternating, so both see the same machine load
            eager_s.append(sample(eager_model) / steps)
            compiled_s.append(sample(compiled_model) / steps)
        before = log.snapshot()
        sample(compiled(make(1)))  # a second identity, through a TorchCompileModel of its own
        report[name] = {"eager_forward_s": statistics.median(eager_s), "compiled_forward_s": statistics.median(compiled_s),
                        "compile_s": first - eager_first, "first_run": first_run,
                        "second_identity_run": DynamoLog.since(before, log.snapshot()),
                        "recompile_reasons": list(log.reasons)}
        log.reasons.clear()
    plain, ours = report["plain"], report["consistentid"]
    report["eager_ratio"] = ours["eager_forward_s"] / plain["eager_forward_s"]
    report["compiled_ratio"] = ours["compiled_forward_s"] / plain["compiled_forward_s"]
    report["goal"] = {"compiled_ratio_at_most": CPU_GOAL, "met": report["compiled_ratio"] <= CPU_GOAL,
                      "applies": not cuda and backend == "inductor"}
    return report


def print_table(report: dict) -> None:
    s = report["settings"]
    print(f"\nUNet forward under torch.compile ({s['backend']}, {s['device']}, latent {s['latent'][0]}x{s['latent'][1]}, "
          f"batch 2, {s['steps']}-step runs, torch {s['torch']}, {s['threads']} threads)")
    print(f"  {'':14s} {'eager s':>9s} {'compiled s':>11s} {'compile s':>10s} {'graphs':>7s} {'breaks':>7s} "
          f"{'recompiles':>11s} {'2nd identity':>13s}")
    for name in ("plain", "consistentid"):
        row, first, second = report[name], report[name]["first_run"], report[name]["second_identity_run"]
        print(f"  {name:14s} {row['eager_forward_s']:9.4f} {row['compiled_forward_s']:11.4f} {row['compile_s']:10.1f} "
              f"{first['graphs']:7d} {first['graph_breaks']:7d} {first['recompiles']:11d} "
              f"{second['recompiles']:>5d} ({second['graphs']} new graphs)")
    goal = report["goal"]
    print(f"  ratio ConsistentID / plain: eager {report['eager_ratio']:.3f}, compiled {report['compiled_ratio']:.3f} "
          f"(goal <= {goal['compiled_ratio_at_most']} on a CPU with inductor: "
          f"{('met' if goal['met'] else 'NOT met') if goal['applies'] else 'not applicable to this run'})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"),
                        help="ComfyUI checkout (default: $COMFYUI_PATH)")
    parser.add_argument("--latent", default="8x8", help="latent height x width (default 8x8: a 64x64 image)")
    parser.add_argument("--steps", type=int, default=20, help="steps per run (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--backend", default="inductor", help="dynamo backend (default inductor)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/compile.json"), help="JSON report path")
    args = parser.parse_args(argv)
    if args.comfyui is None:
        parser.error("--comfyui (or COMFYUI_PATH) is required")
    height, width = (int(v) for v in args.latent.lower().split("x"))
    report = run(args.comfyui.resolve(), (height, width), args.steps, args.rounds, args.backend)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\nfull figures: {args.out}")


if __name__ == "__main__":
    main()
