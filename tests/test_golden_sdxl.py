"""SDXL parity with the official SDXL code (golden files ``sdxl_*``): G1-SDXL prompts through both tokenizers
and the pooled vector the sampler receives, G4-SDXL FacialEncoder, G5-SDXL ProjPlus, G6-SDXL processors."""
import json
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from clip_vocab import MERGES_TXT_SHA256, VOCAB_JSON_SHA256
from consistentid_core.conditioning import facial_conditioning
from consistentid_core.facial_encoder import FacialEncoder
from consistentid_core.projection import ProjPlus, id_tokens
from consistentid_core.prompt import DEFAULT_CAPTIONS, FACIAL, FACIAL_ID, marked_ids
from consistentid_core.regions import MAX_SLOTS, RegionFeatures
from consistentid_core.tokenizer import BIGG_PAD_TOKEN, HFClipBPE
from consistentid_core.unet_layout import PROCESSORS
from diffusers_layout import diffusers_module, heads
from official_attention import consistent_attention

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _unpacked(path) -> dict[str, torch.Tensor]:
    """A ``*_packed`` golden file: each packed weight ``KEY::A``, ``KEY::B``, ``KEY::exp`` decoded exactly as
    ``(A @ B) · 2**exp`` (int8 factors, computed in float64), every other tensor as stored."""
    raw = load_file(path)
    weights = {key: value for key, value in raw.items() if "::" not in key}
    for key in {key.split("::")[0] for key in raw if "::" in key}:
        a, b, exp = raw[f"{key}::A"], raw[f"{key}::B"], raw[f"{key}::exp"]
        weights[key] = (a.double() @ b.double() * 2.0 ** exp.item()).float()
    return weights


def _packed_keys(path) -> list[str]:
    return sorted({key.split("::")[0] for key in load_file(path) if "::" in key})


# --- G1-SDXL ------------------------------------------------------------------------------------------------


class TinyTextEncoders:
    """Two small random causal CLIP text models standing in for the host's SDXL text encoders.

    Embeddings are the penultimate hidden states of CLIP-L and bigG side by side; the pooled output is
    bigG's projected final state at the first EOS, or at the last row without one, as ComfyUI pools.
    ``row(ids, index)`` is the projected final state at any row, what official SDXL pools at ``index``.
    """

    def __init__(self, eos: int):
        self.eos = eos
        self.models = {name: self._model(seed) for name, seed in (("l", 1), ("g", 2))}
        self.calls = []

    @staticmethod
    def _model(seed: int) -> CLIPTextModelWithProjection:
        torch.manual_seed(seed)
        config = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, max_position_embeddings=77, projection_dim=16)
        return CLIPTextModelWithProjection(config).eval()

    def _run(self, name: str, ids: list[int]):
        with torch.no_grad():
            return self.models[name](torch.tensor([ids]), output_hidden_states=True)

    def row(self, ids: list[int], index: int) -> torch.Tensor:
        with torch.no_grad():
            return self.models["g"].text_projection(self._run("g", ids).last_hidden_state[:, index])

    def __call__(self, ids):
        self.calls.append({name: list(row) for name, row in ids.items()})
        embeds = torch.cat([self._run(name, ids[name]).hidden_states[-2] for name in ("l", "g")], -1)
        g = ids["g"]
        return embeds, self.row(g, g.index(self.eos) if self.eos in g else len(g) - 1)


class RecordingFuser:
    """Stands in for the FacialEncoder: returns the prompt embeddings and records the positions to fuse."""

    def __init__(self):
        self.positions = []

    def __call__(self, embeds, features, token_mask, slot_mask):
        self.positions.append(token_mask[0].nonzero().flatten().tolist())
        return embeds


@pytest.fixture(scope="module")
def sdxl_g1(golden_dir) -> dict:
    return json.loads((golden_dir / "sdxl_g1_prompts.json").read_text())


@pytest.fixture(scope="module")
def sdxl_bpe(clip_tokenizer) -> dict[str, HFClipBPE]:
    """The port's two SDXL tokenizers, as the Facial Encoder node builds them on the host's vocabulary."""
    return {"l": clip_tokenizer, "g": HFClipBPE(clip_tokenizer.tokenizer, BIGG_PAD_TOKEN)}


@pytest.fixture(scope="module")
def text_encoders(clip_tokenizer) -> TinyTextEncoders:
    return TinyTextEncoders(clip_tokenizer.eos)


def _conditioning(case: dict, negative: str, bpe, text_encoders):
    names = list(case["region_keys_present"])
    regions = RegionFeatures(names, torch.zeros(len(names), 1, 8), torch.zeros(1, 8))
    fuser = RecordingFuser()
    text_encoders.calls.clear()
    with torch.no_grad():
        out = facial_conditioning(fuser, regions, case["prompt"], negative, bpe, text_encoders, "sdxl",
                                  case["face_caption"])
    return out, list(text_encoders.calls), fuser.positions


def _g1_sdxl_mismatches(case: dict, negative: str, bpe, text_encoders) -> list[str]:
    out, calls, fused_positions = _conditioning(case, negative, bpe, text_encoders)
    fp = out.prompt
    text_only, facial = calls[0], calls[1]
    untruncated_2 = [bpe["g"].bos] + bpe["g"].encode(fp.prompt_face) + [bpe["g"].eos]
    marks = list(fp.marked_positions)
    got = {
        "face_caption_align": fp.aligned_caption,
        "region_keys_kept": list(fp.kept_regions),
        "prompt_face": fp.prompt_face,
        "rule_applied": fp.rule,
        "prompt_text_only": fp.text_only,
        "input_ids_with_markers": marked_ids(fp.prompt_face, bpe["l"]),
        "n_tokens_prompt_face": len(marked_ids(fp.prompt_face, bpe["l"])),
        "clean_input_ids": facial["l"],
        # the positions the facial positive and the negative are fused at
        "facial_token_mask_positions": fused_positions[0],
        "facial_token_idx": (marks + [0] * MAX_SLOTS)[:MAX_SLOTS],
        "facial_token_idx_mask": [i < len(marks) for i in range(MAX_SLOTS)],
        "input_ids_2_untruncated": untruncated_2,
        "n_tokens_2": len(untruncated_2),
        "clean_input_ids_2": facial["g"],
        "pooled_token_id_facial": facial["g"][case["pooled_token_index_facial"]],
        # official SDXL's text-only branch encodes the raw prompt (`text_only_string`), not `prompt_text_only`
        "text_only_input_ids": text_only["l"],
        "text_only_input_ids_2": text_only["g"],
    }
    mismatches = [f"{case['id']}.{key}: {value!r} != {case[key]!r}" for key, value in got.items() if value != case[key]]
    if fused_positions != [marks, marks]:
        mismatches.append(f"{case['id']}: fused at {fused_positions}, marks {marks}")
    # The pooled vectors the sampler receives: bigG's projected state at the official row.
    pooled = {"facial": (out.facial.pooled, case["clean_input_ids_2"], case["pooled_token_index_facial"]),
              "text_only": (out.text_only.pooled, case["text_only_input_ids_2"], case["pooled_token_index_text_only"])}
    for branch, (vector, ids, index) in pooled.items():
        if not torch.allclose(vector, text_encoders.row(ids, index), **TOL):
            mismatches.append(f"{case['id']}.{branch}: pooled output is not bigG's row {index}")
    return mismatches


def test_golden_sdxl_g1_tokenizers(sdxl_g1, sdxl_bpe):
    spec, spec_2 = sdxl_g1["tokenizer"], sdxl_g1["tokenizer_2"]
    # Both official tokenizers are the standard CLIP BPE files; only their pad tokens differ.
    assert (spec["vocab_json_sha256"], spec["merges_txt_sha256"]) == (VOCAB_JSON_SHA256, MERGES_TXT_SHA256)
    for name, official in (("l", spec), ("g", spec_2)):
        assert (sdxl_bpe[name].bos, sdxl_bpe[name].eos) == (official["bos_token_id"], official["eos_token_id"])
    assert (sdxl_bpe["l"].pad, spec["facial_token_id"]) == (spec["pad_token_id"], FACIAL_ID)
    assert (BIGG_PAD_TOKEN, sdxl_bpe["g"].pad) == (spec_2["pad_token"], spec_2["pad_token_id"])
    assert not spec_2["facial_token_in_vocab"]
    assert sdxl_bpe["g"].encode(FACIAL) == spec_2["literal_facial_marker_ids"]
    # bigG splits every "!" off as its pad token, where CLIP-L merges "!!!" into one token.
    assert sdxl_bpe["g"].encode("wow!!!") == spec_2["exclamation_ids_tokenizer_2"] == [2781, 0, 0, 0]
    assert sdxl_bpe["l"].encode("wow!!!") == [2781, 995]


def test_golden_sdxl_g1_prompts(sdxl_g1, sdxl_bpe, text_encoders):
    assert sdxl_g1["default_caption"] == DEFAULT_CAPTIONS["sdxl"]
    assert sdxl_g1["cases"]
    negative = sdxl_g1["negatives"][0]["negative_prompt"]
    mismatches = [m for case in sdxl_g1["cases"]
                  for m in _g1_sdxl_mismatches(case, negative, sdxl_bpe, text_encoders)]
    assert not mismatches, "\n".join(mismatches)
    assert all(not case["facial_token_mask_positions_2_discarded"] for case in sdxl_g1["cases"])


def test_golden_sdxl_g1_overflow_pools_bos_where_the_host_pools_the_last_row(sdxl_g1, sdxl_bpe, text_encoders):
    """The cases whose literal-marker bigG ids lose their EOS: official SDXL pools BOS, the host row 76."""
    overflow = [case for case in sdxl_g1["cases"] if sdxl_bpe["g"].eos not in case["clean_input_ids_2"]]
    assert overflow
    assert [case["pooled_token_index_facial"] for case in overflow] == [0] * len(overflow)
    for case in overflow:
        out, calls, _ = _conditioning(case, "", sdxl_bpe, text_encoders)
        host_pooled = text_encoders(calls[1])[1]
        torch.testing.assert_close(host_pooled, text_encoders.row(case["clean_input_ids_2"], 76))
        assert not torch.allclose(host_pooled, out.facial.pooled, **TOL)
        torch.testing.assert_close(out.facial.pooled, text_encoders.row(case["clean_input_ids_2"], 0), **TOL)


def test_golden_sdxl_g1_negatives(sdxl_g1, sdxl_bpe, text_encoders):
    assert sdxl_g1["negatives"]
    for negative in sdxl_g1["negatives"]:
        out, calls, _ = _conditioning(sdxl_g1["cases"][0], negative["negative_prompt"], sdxl_bpe, text_encoders)
        assert calls[-1] == {"l": negative["input_ids"], "g": negative["input_ids_2"]}
        torch.testing.assert_close(out.negative.pooled,
                                   text_encoders.row(negative["input_ids_2"], negative["pooled_token_index"]), **TOL)


# --- G4/G5/G6-SDXL ------------------------------------------------------------------------------------------


@torch.no_grad()
def test_golden_sdxl_g4_facial_encoder(golden_dir):
    meta = json.loads((golden_dir / "sdxl_g4_facial_encoder.json").read_text())
    path = golden_dir / "sdxl_g4_facial_encoder_weights_packed.safetensors"
    assert _packed_keys(path) == sorted(meta["packing"]["packed_keys"])
    sd = _unpacked(path)
    io = load_file(golden_dir / "sdxl_g4_facial_encoder_io.safetensors")
    with torch.device("meta"):  # no random initialisation at SDXL width: every weight is loaded
        encoder = FacialEncoder.from_state_dict(sd, dim_head=meta["attention_mlp_kwargs"]["dim_head"])
    encoder.load_state_dict(sd, assign=True)
    assert encoder.output_dim == meta["fuse_embed_dim"] == 2048
    for prefix, out_key in (("", "output"), ("neg_", "output_neg")):
        features = io[f"{prefix}multi_image_embeds"]
        hooked = io[f"{prefix}visual_projection_out"]
        torch.testing.assert_close(encoder.region_embeds(features).view(hooked.shape), hooked, **TOL)
        # The negative is fused at the positive prompt's marks, with the positive's valid slots.
        out = encoder(io[f"{prefix}prompt_embeds"], features, io["class_tokens_mask"], io["valid_id_mask"])
        torch.testing.assert_close(out, io[out_key], **TOL)


@torch.no_grad()
def test_golden_sdxl_g5_projection_shortcut_on(golden_dir):
    path = golden_dir / "sdxl_g5_proj_plus_weights_packed.safetensors"
    meta = json.loads((golden_dir / "sdxl_g5_proj_plus.json").read_text())
    assert _packed_keys(path) == sorted(meta["packing"]["packed_keys"])
    sd = _unpacked(path)
    io = load_file(golden_dir / "sdxl_g5_proj_plus_io.safetensors")
    with torch.device("meta"):
        proj = ProjPlus.from_state_dict(sd)
    proj.load_state_dict(sd, assign=True)
    assert proj.cross_attention_dim == 2048
    cond, uncond = id_tokens(proj, io["faceid_embeds"], io["clip_embeds"], io["uncond_clip_embeds"], shortcut=True)
    torch.testing.assert_close(cond, io["output_shortcut_true_scale1.0"], **TOL)
    torch.testing.assert_close(uncond, io["output_uncond_zero_faceid_shortcut_true_scale1.0"], **TOL)
    torch.testing.assert_close(proj(io["faceid_embeds"], io["clip_embeds"]), io["output_shortcut_false"], **TOL)


def test_golden_sdxl_g6_processors(golden_dir):
    meta = json.loads((golden_dir / "sdxl_g6_attention.json").read_text())
    state_path = golden_dir / "sdxl_g6_attention_weights_packed.safetensors"
    adapter_path = golden_dir / "sdxl_g6_adapter_modules_packed.safetensors"
    assert sorted(_packed_keys(state_path) + _packed_keys(adapter_path)) == sorted(meta["packing"]["packed_keys"])
    state, adapter = _unpacked(state_path), _unpacked(adapter_path)
    io = load_file(golden_dir / "sdxl_g6_attention_io.safetensors")
    scale = float(re.search(r"scale=([\d.]+)", meta["processor_cross"]).group(1))
    # The golden modules are SDXL's first two processors; the port's layout gives their width.
    processors = {p.attn: p for p in PROCESSORS["sdxl"][:2]}
    for module, processor in processors.items():
        assert processor.index == int(module == "attn2")
        assert diffusers_module(processor).startswith(meta["sdxl_layer"].split(": ")[1].split(",")[0])
        assert f"query_dim={processor.hidden_size}, " in meta[module]
        assert f"heads={heads('sdxl', processor)}, " in meta[module]

    outputs = sorted(key for key in io if key.startswith("output_"))
    assert outputs == ["output_cross", "output_cross_ip_scale0", "output_self"]
    for name in outputs:
        cross = name.startswith("output_cross")
        processor = processors["attn2" if cross else "attn1"]
        attn = {k[len(processor.attn) + 1:]: v for k, v in state.items() if k.startswith(processor.attn + ".")}
        out = consistent_attention(
            attn, adapter, processor.index, io["hidden_states"], heads("sdxl", processor),
            encoder_hidden_states=io["encoder_hidden_states"] if cross else None,
            ip_scale=0.0 if name.endswith("ip_scale0") else scale,
        )
        torch.testing.assert_close(out, io[name], **TOL, msg=lambda m: f"{name}: {m}")
