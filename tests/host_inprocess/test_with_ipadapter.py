"""ConsistentID stacked with the real ComfyUI_IPAdapter_plus (the snapshot beside the host, see dev_env.py) on
one SD1.5 model, in both orders: each pack's attention branch runs in every block where it runs alone, and the
result differs from either pack alone. An SDXL-keyed stand-in checks the ``.add()`` protocol at 3-tuple keys."""
import importlib
import sys

import pytest
import torch
from branch_counts import count_branches
from dev_env import ipadapter_plus_path
from test_unet_patch import TEXT, _cond, _sample, _tokens, _weights


@pytest.fixture(scope="module")
def ipadapter_plus(host):
    path = ipadapter_plus_path()
    sys.path.insert(0, str(path.parent))
    return importlib.import_module(f"{path.name}.IPAdapterPlus")


@pytest.fixture(scope="module")
def ipadapter_inputs(host, ipadapter_plus, tmp_path_factory):
    import comfy.clip_vision
    from weightgen.host_models import cached_host_models
    from weightgen.ipadapter import write_ipadapter

    files = write_ipadapter(tmp_path_factory.mktemp("models"))
    model = ipadapter_plus.ipadapter_model_loader(str(files["ipadapter_sd15"]))
    clip_vision = comfy.clip_vision.load(str(cached_host_models(None, host.path)["clip_vision_h"]))
    image = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(0))
    return model, clip_vision, image


@pytest.fixture(scope="module")
def ipadapter_patched(host, ipadapter_plus, ipadapter_inputs, base):
    """IPAdapter_plus's own node run once on the caller's model (its image encode costs ~3.5 GB on a CPU);
    the tests re-register its patches with ``_ipadapter_again``."""
    ipadapter, clip_vision, image = ipadapter_inputs
    return ipadapter_plus.ipadapter_execute(base.clone(), ipadapter, clip_vision, image=image, weight=1.0)[0]


def _block(extra_options) -> tuple:
    # SD1.5 has one transformer per block (extra_options["transformer_index"] counts over the whole UNet).
    return tuple(extra_options["block"])


@pytest.fixture
def counted(pack, ipadapter_plus, monkeypatch):
    """Calls per UNet block of each pack's attention branch."""
    return count_branches(monkeypatch, pack, ipadapter_plus, "ipadapter_attention", "ipadapter", _block)


def _consistentid(pack, model):
    return pack.unet_patch.apply_to_model(model, _weights(pack), *_tokens())


def _ipadapter_again(ipadapter_plus, patched, model, weight: float | None = None):
    """IPAdapter_plus's own registration (``set_model_patch_replace``) of the patches ``patched`` holds, onto a
    clone of ``model``, optionally at another ``weight``: what its nodes do after encoding the image. It picks
    up ``counted``'s IPAdapter function."""
    model = model.clone()
    for key, patch in patched.model_options["transformer_options"]["patches_replace"]["attn2"].items():
        kwargs = patch.kwargs[0] if weight is None else {**patch.kwargs[0], "weight": weight}
        ipadapter_plus.set_model_patch_replace(model, kwargs, key)
    return model


def _run(host, model, calls) -> tuple[torch.Tensor, dict]:
    for counter in calls.values():
        counter.clear()
    latent = _sample(host, model, _cond(TEXT), steps=1)
    return latent, {name: dict(counter) for name, counter in calls.items()}


def test_consistentid_and_ipadapter_plus_both_run_in_either_order(host, pack, base, ipadapter_plus,
                                                                   ipadapter_patched, counted):
    ours, ours_calls = _run(host, _consistentid(pack, base), counted)
    assert len(ours_calls["consistentid"]) == 16 and ours_calls["ipadapter"] == {}
    # Alone, IPAdapter_plus fires in 15 blocks: its SD1.5 middle patch sits at ("middle", 1), which this host
    # never calls (the middle transformer is ("middle", 0)); stacked, it must fire in the same 15.
    theirs_model = _ipadapter_again(ipadapter_plus, ipadapter_patched, base)
    theirs, theirs_calls = _run(host, theirs_model, counted)
    assert len(theirs_calls["ipadapter"]) == 15 and ("middle", 0) not in theirs_calls["ipadapter"]
    for stacked in (_ipadapter_again(ipadapter_plus, theirs_model, _consistentid(pack, base)),
                    _consistentid(pack, theirs_model)):
        both, both_calls = _run(host, stacked, counted)
        assert both_calls == {"consistentid": ours_calls["consistentid"], "ipadapter": theirs_calls["ipadapter"]}
        assert not torch.allclose(both, ours) and not torch.allclose(both, theirs)


def test_requeued_with_another_ipadapter_weight_each_block_keeps_one_branch(host, pack, base, ipadapter_plus,
                                                                           ipadapter_patched, counted):
    """Re-queueing ConsistentID → IPAdapter_plus with IPAdapter's weight changed: the host keeps Apply's MODEL
    cached and IPAdapter_plus stacks onto a clone of it again, with ``add``. Each run must equal a fresh one,
    with one IPAdapter branch per block, and the cached MODEL must stay as Apply made it."""
    theirs, cached = ipadapter_patched, _consistentid(pack, base)
    for weight in (1.0, 0.5, 0.8, 1.0):
        requeued, requeued_calls = _run(host, _ipadapter_again(ipadapter_plus, theirs, cached, weight), counted)
        fresh, fresh_calls = _run(host, _ipadapter_again(ipadapter_plus, theirs, _consistentid(pack, base), weight),
                                  counted)
        assert requeued_calls == fresh_calls, weight
        assert set(requeued_calls["ipadapter"].values()) == {1} and len(requeued_calls["ipadapter"]) == 15, weight
        assert torch.equal(requeued, fresh), weight
    attn2 = cached.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert {len(patch.added) for patch in attn2.values()} == {0}


class _StandIn:
    """A pack patch in the style of IPAdapter_plus's Attn2Replace, registered at SDXL-style 3-tuple keys: it
    stacks onto whatever it finds at its key with ``.add``."""

    def __init__(self, callback, **kwargs):
        self.callbacks = [(callback, kwargs)]

    def add(self, callback, **kwargs):
        self.callbacks.append((callback, kwargs))

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        out = optimized_attention(q, k, v, extra_options["n_heads"])
        for callback, kwargs in self.callbacks:
            out = out + callback(out, q, k, v, extra_options, **kwargs)
        return out


def _stand_in_patch(model, seen: list):
    """Patch every cross-attention of ``model`` (a clone) at its 3-tuple key, stacking like the SDXL packs."""
    def branch(out, q, k, v, extra_options, key, **kwargs):
        seen.append(key)
        return torch.zeros_like(out)

    attn2 = model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    for key in [(*p.block, p.transformer_index) for p in _sd15_cross(model)]:
        if key in attn2:
            attn2[key].add(branch, key=key, sigma_start=1e9, sigma_end=0.0)
        else:
            model.set_model_attn2_replace(_StandIn(branch, key=key, sigma_start=1e9, sigma_end=0.0), *key)
    return model


def _sd15_cross(model):
    from consistentid_core.unet_layout import PROCESSORS

    return [p for p in PROCESSORS["sd15"] if p.kind == "cross"]


def test_a_pack_stacking_with_add_at_3_tuple_keys_runs_with_ours_in_either_order(host, pack, base, counted):
    keys = {(*p.block, p.transformer_index) for p in _sd15_cross(base)}
    blocks = {p.block for p in _sd15_cross(base)}
    for order in ("ours first", "theirs first"):
        seen = []
        if order == "ours first":
            model = _stand_in_patch(_consistentid(pack, base).clone(), seen)
        else:
            model = _consistentid(pack, _stand_in_patch(base.clone(), seen))
        _, calls = _run(host, model, counted)
        assert calls["consistentid"] == dict.fromkeys(blocks, 1) and sorted(seen) == sorted(keys), order
    # Stacking onto a clone never reaches the caller's model.
    assert "patches_replace" not in base.model_options["transformer_options"]
