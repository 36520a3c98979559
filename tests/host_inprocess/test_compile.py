"""The ConsistentID-patched UNet under torch.compile, through the host's TorchCompileModel (issue 27), on the
full-size random SD1.5 UNet: graph breaks and recompiles by dynamo's own accounting, and the output against eager.

No code is generated: TorchCompileModel gets a backend that counts the graphs dynamo hands it and runs them as
they are. A graph break is a ``counters["graph_break"]`` entry of the first forward; a recompile is a graph that
dynamo traces after that forward, with the reason dynamo's ``recompiles`` log gives.

The UNet's attention is PyTorch's SDPA, as on a GPU host (``--use-pytorch-cross-attention`` on a CPU): a CPU host's
default sub-quadratic attention asks psutil for the free memory in every attention call, an ``open`` that dynamo
cannot trace, so the plain UNet alone would break 33 times per forward.

Counts on 0.3.64 and 0.28.0 alike (8x8 latent, 2-step euler runs with CFG): plain, Apply, Apply with mask,
start/end, two Applies with two masks: 1 graph, 0 breaks, 0 recompiles over the steps, 0 recompiles and 0 new graphs
when identity, weight, mask values, range and prompt change, compiled = eager exactly (the counting backend runs the
traced aten ops in eager's order). Before the branch made its per-step decisions with tensor ops, start/end compiled
to a graph without the branch on 0.28.0 (whose TorchCompileModel drops the guards on ``transformer_options``), so
compiled and eager differed by 12.45.

IPAdapter_plus stacked is not tested here: IPAdapter_plus alone under TorchCompileModel on 0.28.0 already breaks the
graph 11 times (its ``Attn2Replace`` reads the sigma with ``.item()``), recompiles 41 times over a 2-step run (the
resumed frames see each block's shapes) and differs from eager by 114, so it gives no baseline to hold ours to.
"""
import logging

import pytest
import torch
import torch._dynamo
from test_unet_patch import NEGATIVE, TEXT, _cond, _tokens, _weights
from torch._dynamo.utils import counters

BACKEND = "consistentid_test_count_graphs"
LATENT = (1, 4, 8, 8)
STEPS = 2  # the sigma and the step change once
TOLERANCE = 1e-4  # max |compiled - eager| of the sampled latent (values of order 1): float reassociation only


class _Graphs:
    """The graphs dynamo compiles while a test runs, and the reasons it gives for recompiling."""

    def __init__(self):
        self.count = 0
        self.reasons: list[str] = []

    def backend(self, graph_module, example_inputs):
        self.count += 1
        return graph_module.forward

    def emit(self, record):
        self.reasons.append(record.getMessage())


GRAPHS = _Graphs()
torch._dynamo.register_backend(GRAPHS.backend, name=BACKEND)


@pytest.fixture(scope="module", autouse=True)
def dynamo(host, pack):
    """SDPA attention for the host and the pack (see the module's docstring), dynamo's recompile log caught."""
    import comfy.ldm.modules.attention as attention

    default = attention.optimized_attention
    attention.optimized_attention = pack.unet_patch.optimized_attention = attention.attention_pytorch
    handler = logging.Handler()
    handler.emit = GRAPHS.emit
    log = logging.getLogger("torch._dynamo.guards.__recompiles")
    torch._logging.set_logs(recompiles=True)
    log.addHandler(handler)
    yield
    log.removeHandler(handler)
    torch._logging.set_logs()
    attention.optimized_attention = pack.unet_patch.optimized_attention = default
    torch._dynamo.reset()


def _compiled(model):
    """The host's TorchCompileModel node on ``model``, as a workflow runs it."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    return TorchCompileModel.execute(model, BACKEND).result[0]


def _sample(host, model, steps=STEPS, text=TEXT):
    noise = torch.randn(LATENT, generator=torch.Generator().manual_seed(0))
    return host.sample.sample(model, noise, steps, 5.0, "euler", "normal", _cond(text), _cond(NEGATIVE),
                              torch.zeros(LATENT), disable_pbar=True, seed=0)


def _accounting(host, label: str, model, same_shapes=()) -> dict:
    """Graphs, breaks and recompiles of a compiled run of ``STEPS`` steps (sigma and step change per forward),
    and recompiles over runs of ``same_shapes`` ((label, model, prompt value): other values of the same shapes,
    each through its own TorchCompileModel as a re-queued workflow); each run's largest difference from eager."""
    torch._dynamo.reset()
    counters.clear()
    GRAPHS.count, GRAPHS.reasons[:] = 0, []
    out = _sample(host, _compiled(model))
    figures = {"graphs": GRAPHS.count, "breaks": sum(counters["graph_break"].values()),
               "break_reasons": sorted(reason.split("\n")[0] for reason in counters["graph_break"]),
               "recompiles_over_steps": len(GRAPHS.reasons),
               "max_diff": (out - _sample(host, model)).abs().max().item()}
    for change, other, text in same_shapes:
        out = _sample(host, _compiled(other), text=text)
        figures[f"max_diff {change}"] = (out - _sample(host, other, text=text)).abs().max().item()
    figures["recompiles_same_shapes"] = len(GRAPHS.reasons) - figures["recompiles_over_steps"]
    figures["graphs_same_shapes"] = GRAPHS.count - figures["graphs"]
    figures["recompile_reasons"] = list(GRAPHS.reasons)
    print(f"\n{label}: " + ", ".join(f"{k}={v}" for k, v in figures.items() if "reasons" not in k))
    return figures


def _half(side: str) -> torch.Tensor:
    mask = torch.zeros(1, 32, 32)
    mask[..., slice(0, 16) if side == "left" else slice(16, 32)] = 1.0
    return mask


@pytest.fixture(scope="module")
def plain(host, base):
    return _accounting(host, "plain", base, [("prompt", base, 0.5)])


def test_plain_unet_compiles_to_one_graph(plain):
    assert (plain["graphs"], plain["breaks"]) == (1, 0), plain["break_reasons"]
    assert plain["recompiles_over_steps"] == plain["recompiles_same_shapes"] == plain["graphs_same_shapes"] == 0, \
        plain["recompile_reasons"]
    assert plain["max_diff"] == 0.0


def _assert_like_plain(figures, plain):
    """No graph break beyond the plain UNet's, no recompile, the compiled run as eager."""
    assert (figures["graphs"], figures["breaks"]) == (plain["graphs"], plain["breaks"]), figures["break_reasons"]
    assert figures["recompiles_over_steps"] == 0, figures["recompile_reasons"]
    assert figures["recompiles_same_shapes"] == figures["graphs_same_shapes"] == 0, figures["recompile_reasons"]
    diffs = {k: v for k, v in figures.items() if k.startswith("max_diff")}
    assert max(diffs.values()) <= TOLERANCE, diffs


# Each run of the same shapes changes every value a re-queue may change at once: it passes every guard dynamo put
# on the first run only if each changed value passes its own.
@pytest.mark.parametrize("config", ["apply", "apply with mask", "start and end"])
def test_one_apply_compiles_like_the_plain_unet(host, pack, base, plain, config):
    """No recompile when the identity, weight, mask values, range or prompt change for the same shapes; the
    start/end range switches the branch within the run (on at the second step only)."""
    apply = pack.unet_patch.apply_to_model
    options, other = {"apply": ({}, {}), "apply with mask": ({"mask": _half("left")}, {"mask": _half("right") * 0.6}),
                      "start and end": ({"start_at": 0.3, "end_at": 0.7}, {"start_at": 0.0, "end_at": 0.4})}[config]
    model = apply(base, _weights(pack), *_tokens(), **options)
    changed = apply(base, _weights(pack), *_tokens(seed=7), **{**options, **other, "weight": 0.4})
    _assert_like_plain(_accounting(host, config, model, [("identity, weight, mask, range, prompt", changed, 0.5)]),
                       plain)


def test_two_applies_with_two_masks_compile_like_the_plain_unet(host, pack, base, plain):
    apply = pack.unet_patch.apply_to_model

    def two(first, second, weight=1.0):
        one = apply(base, _weights(pack), *_tokens(seed=first), mask=_half("left"))
        return apply(one, _weights(pack), *_tokens(seed=second), mask=_half("right"), weight=weight)

    _assert_like_plain(_accounting(host, "two applies", two(1, 2), [("identities, weight", two(3, 4, 0.5), TEXT)]),
                       plain)
