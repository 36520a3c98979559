"""Attention maths against the official processors (golden G6), and the LoRA / ID-weight key maps."""
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from consistentid_core.attention import ip_weights, lora_deltas
from consistentid_core.unet_layout import PROCESSORS
from official_attention import consistent_attention, ip_attention


def _reduced_adapter(arch: str) -> dict[str, torch.Tensor]:
    """Every adapter key of ``arch`` with a distinct 1×1 value, so the maps can be checked by value."""
    adapter = {}
    for p in PROCESSORS[arch]:
        names = [f"{lora}.{side}.weight" for lora in ("to_q_lora", "to_k_lora", "to_v_lora", "to_out_lora")
                 for side in ("up", "down")]
        if p.kind == "cross":
            names += ["to_k_ip.weight", "to_v_ip.weight"]
        for name in names:
            adapter[f"{p.index}.{name}"] = torch.full((1, 1), float(len(adapter)))
    return adapter


# Spot checks from the index table of spec §1.3: LDM module, adapter index, attn2 replace key.
SPOTS = {
    "sd15": [("input_blocks.4.1.transformer_blocks.0.attn1", 4, None),
             ("output_blocks.11.1.transformer_blocks.0.attn2", 29, ("output", 11, 0)),
             ("middle_block.1.transformer_blocks.0.attn2", 31, ("middle", 0, 0))],
    "sdxl": [("input_blocks.4.1.transformer_blocks.0.attn1", 0, None),
             ("output_blocks.5.1.transformer_blocks.1.attn2", 119, ("output", 5, 1)),
             ("middle_block.1.transformer_blocks.0.attn2", 121, ("middle", 0, 0)),
             ("middle_block.1.transformer_blocks.9.attn2", 139, ("middle", 0, 9))],
}


@pytest.mark.parametrize("arch, n_keys, n_cross", [("sd15", 128, 16), ("sdxl", 560, 70)])
def test_lora_deltas_cover_every_attention_projection(arch, n_keys, n_cross):
    adapter = _reduced_adapter(arch)
    deltas = lora_deltas(adapter, arch)
    assert len(deltas) == n_keys
    assert all(re.fullmatch(r"diffusion_model\.(input_blocks\.\d+\.1|middle_block\.1|output_blocks\.\d+\.1)"
                            r"\.transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)\.weight", k)
               for k in deltas)
    ip = ip_weights(adapter, arch)
    assert len(ip) == n_cross
    for module, index, replace_key in SPOTS[arch]:
        for proj, lora in (("to_q", "to_q_lora"), ("to_out.0", "to_out_lora")):
            up, down = deltas[f"diffusion_model.{module}.{proj}.weight"]
            assert up is adapter[f"{index}.{lora}.up.weight"] and down is adapter[f"{index}.{lora}.down.weight"]
        if replace_key is not None:
            k_ip, v_ip = ip[replace_key]
            assert k_ip is adapter[f"{index}.to_k_ip.weight"] and v_ip is adapter[f"{index}.to_v_ip.weight"]


def test_ip_attention_is_a_separate_softmax_over_the_id_tokens():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    out = ip_attention(q, k, v, heads=2)
    qh, kh, vh = (t.view(2, -1, 2, 4).transpose(1, 2) for t in (q, k, v))
    expected = (torch.softmax(qh @ kh.transpose(-1, -2) / 2.0, -1) @ vh).transpose(1, 2).reshape(2, 5, 8)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_golden_g6_official_processors(golden_dir):
    meta = json.loads((golden_dir / "g6_attention.json").read_text())
    heads = int(re.search(r"heads=(\d+)", meta["attn1"]).group(1))
    assert heads == int(re.search(r"heads=(\d+)", meta["attn2"]).group(1))
    scale = float(re.search(r"scale=([\d.]+)", meta["processor_cross"]).group(1))
    processor_index = {v.split(" ")[1].strip("()").split(",")[0]: int(k) for k, v in meta["adapter_modules_index"].items()}
    state = load_file(golden_dir / "g6_attention_state_dict.safetensors")
    adapter = load_file(golden_dir / "g6_adapter_modules.safetensors")
    io = load_file(golden_dir / "g6_attention_io.safetensors")

    outputs = sorted(k for k in io if k.startswith("output_"))
    assert outputs, "no outputs in g6_attention_io.safetensors"
    for name in outputs:
        cross = name.startswith("output_cross")
        module = "attn2" if cross else "attn1"
        attn = {k[len(module) + 1:]: v for k, v in state.items() if k.startswith(module + ".")}
        out = consistent_attention(
            attn, adapter, processor_index[module], io["hidden_states"], heads,
            encoder_hidden_states=io["encoder_hidden_states"] if cross else None,
            ip_scale=0.0 if name.endswith("ip_scale0") else scale,
        )
        torch.testing.assert_close(out, io[name], atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
