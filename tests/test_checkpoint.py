"""Checkpoint layouts (spec §1, param_shapes.txt), the UNet processor map, and bad or mismatched files."""
import json
import pickle
import re
import time
from functools import partial

import pytest
import torch
from safetensors.torch import save_file

from consistentid_core.checkpoint import (ConsistentIDModel, build_facial_encoder, build_projection,
                                          expected_adapter_shapes, load_checkpoint)
from consistentid_core.errors import WeightFileError
from consistentid_core.facial_encoder import FacialEncoder
from consistentid_core.projection import ProjPlus
from consistentid_core.unet_layout import CROSS_ATTENTION_DIM, PROCESSORS
from diffusers_layout import diffusers_module, heads
from weightgen.consistentid import write_checkpoints

ARCHS = ["sd15", "sdxl"]


def _block(spec_dir, arch: str, title: str) -> list[list[str]]:
    """Tab-separated rows of the '### <ARCH> <title>' section of param_shapes.txt."""
    text = (spec_dir / "param_shapes.txt").read_text()
    body = re.search(rf"^### {arch.upper()} {title}\b.*?\n(.*?)(?=^###|^=+|\Z)", text, re.S | re.M).group(1)
    return [line.split("\t") for line in body.splitlines() if "\t" in line]


def _spec_shapes(spec_dir, arch, title) -> dict[str, tuple]:
    return {key: tuple(json.loads(shape)) for key, shape in _block(spec_dir, arch, title)}


def _shapes(module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_modules_match_released_layout(spec_dir, arch):
    c = CROSS_ATTENTION_DIM[arch]
    with torch.device("meta"):
        facial, proj = FacialEncoder(output_dim=c), ProjPlus(c)
        rebuilt = FacialEncoder.from_state_dict(facial.state_dict()), ProjPlus.from_state_dict(proj.state_dict())
    assert _shapes(facial) == _spec_shapes(spec_dir, arch, "FacialEncoder")
    assert _shapes(proj) == _spec_shapes(spec_dir, arch, "image_proj")
    assert [_shapes(m) for m in rebuilt] == [_shapes(facial), _shapes(proj)]
    # heads are not in the shapes: the 64-wide official heads must come back
    assert rebuilt[0].visual_projection.layers[0][0].heads == 16
    assert rebuilt[1].perceiver_resampler.layers[0][0].heads == c // 64


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_shapes_match_released_layout(spec_dir, arch):
    assert expected_adapter_shapes(arch, 128) == _spec_shapes(spec_dir, arch, "adapter_modules")


@pytest.mark.parametrize("arch", ARCHS)
def test_processor_layout_matches_index_map(spec_dir, arch):
    c = CROSS_ATTENTION_DIM[arch]
    rows = _block(spec_dir, arch, "processor index map")
    ours = [[str(p.index), f"{diffusers_module(p)}.processor", str(p.hidden_size),
             str(c if p.kind == "cross" else p.hidden_size), str(heads(arch, p)),
             "Consistent_IPAttProcessor" if p.kind == "cross" else "Consistent_AttProcessor"] for p in PROCESSORS[arch]]
    assert ours == rows


def test_processor_layout_uses_comfyui_block_ids():
    """Block ids and module paths as ComfyUI's UNets have them (COMFYUI_HOST.md §3)."""
    sd15, sdxl = PROCESSORS["sd15"], PROCESSORS["sdxl"]
    assert sd15[0].ldm_module == "input_blocks.1.1.transformer_blocks.0.attn1"
    assert sd15[31].ldm_module == "middle_block.1.transformer_blocks.0.attn2" and sd15[31].block == ("middle", 0)
    assert sdxl[49].ldm_module == "output_blocks.0.1.transformer_blocks.0.attn2"
    assert sdxl[139].ldm_module == "middle_block.1.transformer_blocks.9.attn2"
    blocks = {arch: sorted({p.block for p in PROCESSORS[arch]}) for arch in ARCHS}
    assert blocks["sd15"] == [("input", n) for n in (1, 2, 4, 5, 7, 8)] + [("middle", 0)] + [
        ("output", n) for n in range(3, 12)]
    assert blocks["sdxl"] == [("input", n) for n in (4, 5, 7, 8)] + [("middle", 0)] + [("output", n) for n in range(6)]
    assert [sum(p.kind == "cross" for p in PROCESSORS[a]) for a in ARCHS] == [16, 70]
    assert {(p.hidden_size, heads("sdxl", p)) for p in sdxl} == {(640, 10), (1280, 20)}


@pytest.fixture(scope="module")
def unit(consistentid_unit_files):
    return consistentid_unit_files


@pytest.fixture(scope="module")
def unit_nested(unit):
    return torch.load(unit["consistentid_sd15_unit"], weights_only=True)


@pytest.mark.parametrize("key, arch, c", [("consistentid_sd15_unit", "sd15", 768),
                                          ("consistentid_sd15_unit_safetensors", "sd15", 768),
                                          ("consistentid_sdxl_unit", "sdxl", 2048)])
def test_unit_checkpoints_load(unit, key, arch, c):
    w = load_checkpoint(unit[key])
    assert (w.arch, w.cross_attention_dim, w.lora_rank, w.name) == (arch, c, 4, unit[key].name)
    assert len(w.processors) == (32 if arch == "sd15" else 140)
    assert w.adapter["1.to_q_lora.up.weight"].abs().max() > 0
    face = torch.randn(1, 512)
    with torch.no_grad():
        tokens = build_projection(w)(face, torch.randn(1, 257, 1280))
        regions = build_facial_encoder(w).region_embeds(torch.randn(1, 5, 257, 1280))
    assert tokens.shape == (1, 4, c) and regions.shape == (1, 5, c)
    assert torch.isfinite(tokens).all() and torch.isfinite(regions).all()


def test_bin_and_safetensors_hold_the_same_weights(unit):
    a, b = load_checkpoint(unit["consistentid_sd15_unit"]), load_checkpoint(unit["consistentid_sd15_unit_safetensors"])
    for part in ("facial_encoder", "image_proj", "adapter"):
        sa, sb = getattr(a, part), getattr(b, part)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_generator_is_deterministic(tmp_path, unit):
    again = write_checkpoints(tmp_path, size="unit")
    assert again.keys() == unit.keys()
    assert (again["consistentid_sdxl_unit"].read_bytes() == unit["consistentid_sdxl_unit"].read_bytes())


def test_full_size_sd15_checkpoint(tmp_path):
    """The released SD1.5 layout at full size (~370 MB fp16): plain weights-only torch.load, then validation."""
    start = time.perf_counter()
    files = write_checkpoints(tmp_path, size="full")
    written = time.perf_counter()
    raw = torch.load(files["consistentid_sd15"], map_location="cpu", weights_only=True, mmap=True)
    assert list(raw) == ["FacialEncoder", "image_proj", "adapter_modules"]
    assert [len(raw[k]) for k in raw] == [109, 56, 288]
    assert {v.dtype for part in raw.values() for v in part.values()} == {torch.float16}
    assert sum(v.numel() for part in raw.values() for v in part.values()) == 184_033_024
    loaded = time.perf_counter()
    w = load_checkpoint(files["consistentid_sd15"])
    validated = time.perf_counter()
    assert (w.arch, w.lora_rank) == ("sd15", 128)
    assert load_checkpoint(files["consistentid_sd15_safetensors"]).arch == "sd15"
    print(f"\nfull SD1.5: write {written - start:.1f} s, torch.load {loaded - written:.2f} s, "
          f"load_checkpoint {validated - loaded:.2f} s")


def _save(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _message(path) -> str:
    with pytest.raises(WeightFileError) as err:
        load_checkpoint(path)
    return str(err.value)


def test_text_file_is_refused(tmp_path):
    path = tmp_path / "ConsistentID-v1.bin"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 368000000\n")
    msg = _message(path)
    assert "'ConsistentID-v1.bin' is not a readable checkpoint" in msg and "Git LFS pointer" in msg
    assert "Fix: Download the file again from https://huggingface.co/JackAILab/ConsistentID" in msg


@pytest.mark.parametrize("key", ["consistentid_sd15_unit", "consistentid_sd15_unit_safetensors"])
def test_truncated_file_is_refused(tmp_path, unit, key):
    data = unit[key].read_bytes()
    path = tmp_path / unit[key].name
    path.write_bytes(data[: len(data) // 2])
    assert f"'{path.name}' is not a readable checkpoint: it is truncated, damaged" in _message(path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would call open(marker, "w"), creating the file
        return open, (self.marker, "w")


@pytest.mark.parametrize("save", [torch.save, partial(pickle.dump, protocol=2)], ids=["torch_zip", "raw_pickle"])
def test_pickle_with_code_is_refused_without_running_it(tmp_path, save):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        save({"FacialEncoder": _Payload(str(marker))}, f)
    msg = _message(path)
    assert "'evil.bin' was refused: reading it would run code or build Python objects besides tensors" in msg
    assert not marker.exists()


def test_other_model_file_is_not_taken_for_consistentid(tmp_path):
    path = _save(tmp_path, "model.bin", {"state_dict": {"conv.weight": torch.zeros(2)}})
    msg = _message(path)
    assert "'model.bin' is not a ConsistentID checkpoint: it has no FacialEncoder, image_proj, adapter_modules" in msg
    assert "this one holds state_dict" in msg


def test_unknown_processor_count(tmp_path, unit_nested):
    broken = {**unit_nested, "adapter_modules": {k: v for k, v in unit_nested["adapter_modules"].items()
                                                 if int(k.split(".")[0]) < 10}}
    broken["adapter_modules"]["1.to_k_ip.weight"] = torch.zeros(320, 1024)
    msg = _message(_save(tmp_path, "odd.bin", broken))
    assert "'odd.bin' has 10 attention processors with cross-attention width 1024" in msg


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path, unit_nested):
    adapter = dict(unit_nested["adapter_modules"])
    del adapter["5.to_k_ip.weight"]
    adapter["5.to_k_ip.bias"] = torch.zeros(640)
    facial = dict(unit_nested["FacialEncoder"])
    facial["fuse_module.mlp1.fc1.weight"] = torch.zeros(768, 1000)
    path = _save(tmp_path, "broken.bin", {**unit_nested, "adapter_modules": adapter, "FacialEncoder": facial})
    msg = _message(path)
    assert "'broken.bin' does not match the SD1.5 ConsistentID layout" in msg
    assert "1 missing keys: adapter_modules.5.to_k_ip.weight" in msg
    assert "1 unexpected keys: adapter_modules.5.to_k_ip.bias" in msg
    assert ("1 keys with the wrong shape: FacialEncoder.fuse_module.mlp1.fc1.weight [768, 1000] "
            "(expected [768, 1536])") in msg
    assert "Fix: Download the complete SD1.5 file (ConsistentID-v1.bin) again" in msg


def test_long_key_lists_are_cut(tmp_path, unit_nested):
    adapter = {k: v for k, v in unit_nested["adapter_modules"].items() if not k.endswith("up.weight")}
    msg = _message(_save(tmp_path, "half.bin", {**unit_nested, "adapter_modules": adapter}))
    assert "128 missing keys: adapter_modules.0.to_q_lora.up.weight, " in msg
    assert msg.count("adapter_modules.") == 10 and "up.weight, …." in msg


def test_training_dump_is_accepted(tmp_path, unit_nested):
    flat = {f"module.unet.down_blocks.0.attentions.0.{i}.weight": torch.zeros(3) for i in range(3)}
    names = {"FacialEncoder": "FacialEncoder", "image_proj": "image_proj_model", "adapter_modules": "adapter_modules"}
    for part, sd in unit_nested.items():
        flat.update({f"module.{names[part]}.{k}": v for k, v in sd.items()})
    w = load_checkpoint(_save(tmp_path, "pytorch_model.bin", flat))
    assert w.arch == "sd15" and w.adapter.keys() == unit_nested["adapter_modules"].keys()
    assert torch.equal(w.image_proj["proj.0.weight"], unit_nested["image_proj"]["proj.0.weight"])


def test_sdxl_spelling_in_flat_safetensors(tmp_path, unit):
    sdxl = load_checkpoint(unit["consistentid_sdxl_unit"])
    flat = {f"{p}.{k}": v.clone(memory_format=torch.contiguous_format)
            for p, sd in (("image_proj_model", sdxl.image_proj), ("FacialEncoder", sdxl.facial_encoder))
            for k, v in sd.items()}
    flat.update({f"adapter_modules.{k}": v.clone(memory_format=torch.contiguous_format)
                 for k, v in sdxl.adapter.items() if k.startswith(("0.", "1."))})
    save_file(flat, tmp_path / "x.safetensors")
    msg = _message(tmp_path / "x.safetensors")  # arch from the cross-attention width, then 138 processors missing
    assert "does not match the SDXL ConsistentID layout" in msg and "missing keys" in msg


def test_model_builds_each_encoder_once(unit):
    model = ConsistentIDModel(load_checkpoint(unit["consistentid_sd15_unit"]))
    enc = model.facial_encoder()
    assert model.facial_encoder() is enc and model.facial_encoder(torch.float16) is not enc
    assert next(model.projection(torch.float16).parameters()).dtype == torch.float16
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.training
