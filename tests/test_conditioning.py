"""The three conditionings of spec §5.1 (SD1.5) and §6 (SDXL), with a table lookup as the text encoder, and
the weight per facial region."""
import json

import pytest
import torch
from safetensors.torch import load_file

from consistentid_core.checkpoint import build_facial_encoder, load_checkpoint
from consistentid_core.conditioning import REGION_PARTS, facial_conditioning
from consistentid_core.facial_encoder import FacialEncoder
from consistentid_core.prompt import build_facial_prompt, literal_ids, standard_ids
from consistentid_core.regions import REGION_KEYWORD, RegionFeatures
from consistentid_core.tokenizer import BIGG_PAD_TOKEN, HFClipBPE

ALL_REGIONS = ["Face", "Left_Eye", "Left_Ear", "Nose", "Upper_Lip"]
PROMPT = "A man, in a forest, adventuring"
NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality, blurry"


class TableEncoder:
    """A fake text encoder whose output row depends on the token id and its position, per encoder."""

    def __init__(self, dims: dict[str, int]):
        gen = torch.Generator().manual_seed(7)
        self.tables = {name: torch.randn(49410, dim, generator=gen) for name, dim in dims.items()}
        self.positions = {name: torch.randn(77, dim, generator=gen) for name, dim in dims.items()}
        self.calls = []

    def embed(self, ids):
        return torch.cat([self.tables[name][torch.tensor(row)] + self.positions[name]
                          for name, row in ids.items()], -1)[None]

    def __call__(self, ids):
        self.calls.append({name: list(row) for name, row in ids.items()})
        embeds = self.embed(ids)
        return embeds, embeds[:, 0]


def _encoder(path):
    return build_facial_encoder(load_checkpoint(path))


def _regions(encoder, names, tokens=5):
    gen = torch.Generator().manual_seed(3)
    width = encoder.visual_projection.proj_in.weight.shape[1]
    return RegionFeatures(list(names), torch.randn(len(names), tokens, width, generator=gen),
                          torch.randn(tokens, width, generator=gen))


def _fused_row(encoder, token_embed, feature):
    with torch.no_grad():
        region = encoder.region_embeds(feature[None, None])[0, 0]
        return encoder.fuse_module(token_embed[None], region[None])[0]


@pytest.fixture(scope="module")
def sd15(consistentid_unit_files):
    return _encoder(consistentid_unit_files["consistentid_sd15_unit"])


def test_sd15_three_conditionings_follow_the_official_assembly(sd15, clip_tokenizer):
    regions = _regions(sd15, ALL_REGIONS)
    features_before = regions.features.clone()
    text = TableEncoder({"l": 768})
    with torch.no_grad():
        out = facial_conditioning(sd15, regions, PROMPT, NEGATIVE, {"l": clip_tokenizer}, text)

    expected = build_facial_prompt(PROMPT, ALL_REGIONS, clip_tokenizer)
    assert out.prompt == expected
    assert expected.marked_positions == (16, 19, 22, 25, 29)  # spec §3.6 (b)
    assert text.calls == [{"l": standard_ids(expected.text_only, clip_tokenizer)},
                          {"l": list(expected.clean_ids)},
                          {"l": standard_ids(NEGATIVE, clip_tokenizer)}]

    plain = text.embed({"l": list(expected.clean_ids)})[0]
    assert torch.equal(out.text_only.embeds[0], text.embed({"l": standard_ids(expected.text_only, clip_tokenizer)})[0])
    # The text-only ids equal the clean ids when the prompt fits (spec §5.1), so only marked rows differ.
    assert torch.equal(out.text_only.embeds[0], plain)
    negative = text.embed({"l": standard_ids(NEGATIVE, clip_tokenizer)})[0]
    marked = set(expected.marked_positions)
    for row in range(77):
        if row not in marked:
            assert torch.equal(out.facial.embeds[0, row], plain[row])
            assert torch.equal(out.negative.embeds[0, row], negative[row])
    # The official eye/ear swap: the i-th marked token (face, ears, eyes, nose, mouth) takes the i-th slot
    # in class-id order (Face, Left_Eye, Left_Ear, Nose, Upper_Lip).
    for slot, row in enumerate(expected.marked_positions):
        torch.testing.assert_close(out.facial.embeds[0, row], _fused_row(sd15, plain[row], regions.features[slot]),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.negative.embeds[0, row], _fused_row(sd15, negative[row], regions.zero_features),
                                   atol=1e-5, rtol=1e-5)
    assert torch.equal(regions.features, features_before)


def test_regions_missing_from_the_caption_are_dropped_before_pairing(sd15, clip_tokenizer):
    regions = _regions(sd15, ALL_REGIONS)
    caption = "The person has one face, one nose, two eyes, and one mouth."  # no ears
    text = TableEncoder({"l": 768})
    with torch.no_grad():
        out = facial_conditioning(sd15, regions, PROMPT, NEGATIVE, {"l": clip_tokenizer}, text, caption=caption)

    assert out.prompt.kept_regions == ("Face", "Left_Eye", "Nose", "Upper_Lip")
    plain = text.embed({"l": list(out.prompt.clean_ids)})[0]
    slots = [ALL_REGIONS.index(name) for name in out.prompt.kept_regions]
    for row, slot in zip(out.prompt.marked_positions, slots, strict=True):
        torch.testing.assert_close(out.facial.embeds[0, row], _fused_row(sd15, plain[row], regions.features[slot]),
                                   atol=1e-5, rtol=1e-5)


def test_a_caption_over_330_characters_fuses_nothing(sd15, clip_tokenizer):
    regions = _regions(sd15, ALL_REGIONS)
    caption = "The person has one face, one nose, two eyes, two ears, and one mouth. " * 5
    text = TableEncoder({"l": 768})
    with torch.no_grad():
        out = facial_conditioning(sd15, regions, PROMPT, NEGATIVE, {"l": clip_tokenizer}, text, caption=caption)
    assert out.prompt.rule == "caption_over_330_chars"
    assert torch.equal(out.facial.embeds, text.embed({"l": list(out.prompt.clean_ids)}))
    assert torch.equal(out.negative.embeds, text.embed({"l": standard_ids(NEGATIVE, clip_tokenizer)}))


def test_sdxl_uses_literal_markers_for_clip_g_and_the_raw_prompt_for_text_only(consistentid_unit_files,
                                                                                clip_tokenizer):
    encoder = _encoder(consistentid_unit_files["consistentid_sdxl_unit"])
    bpe_g = HFClipBPE(clip_tokenizer.tokenizer, BIGG_PAD_TOKEN)
    regions = _regions(encoder, ALL_REGIONS)
    text = TableEncoder({"l": 768, "g": 1280})
    with torch.no_grad():
        out = facial_conditioning(encoder, regions, PROMPT, NEGATIVE, {"l": clip_tokenizer, "g": bpe_g}, text,
                                  arch="sdxl")

    expected = build_facial_prompt(PROMPT, ALL_REGIONS, clip_tokenizer, arch="sdxl")
    assert text.calls[0] == {"l": standard_ids(PROMPT, clip_tokenizer), "g": standard_ids(PROMPT, bpe_g)}
    assert text.calls[1] == {"l": list(expected.clean_ids), "g": literal_ids(expected.prompt_face, bpe_g)}
    assert text.calls[1]["g"][-1] == 0 and text.calls[0]["g"][-1] == 0  # CLIP-G pads with 0
    assert out.facial.embeds.shape == (1, 77, 2048)
    plain = text.embed(text.calls[1])[0]
    changed = (out.facial.embeds[0] != plain).any(-1).nonzero().flatten().tolist()
    assert changed == list(expected.marked_positions)


@pytest.fixture(scope="module")
def sdxl(consistentid_unit_files):
    return _encoder(consistentid_unit_files["consistentid_sdxl_unit"])


@pytest.fixture(scope="module")
def table():
    """One CLIP-L table for the tests that do not read its calls (building one takes most of a test's time)."""
    return TableEncoder({"l": 768})


def _assert_same(a, b):
    assert a.prompt == b.prompt
    for name in ("text_only", "facial", "negative"):
        assert torch.equal(getattr(a, name).embeds, getattr(b, name).embeds), name
        assert torch.equal(getattr(a, name).pooled, getattr(b, name).pooled), name


def _without(regions, parts):
    rows = [i for i, name in enumerate(regions.names) if REGION_KEYWORD[name] not in parts]
    return RegionFeatures([regions.names[i] for i in rows], regions.features[rows], regions.zero_features)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_region_weights_of_one_are_the_official_result_bit_for_bit(arch, sd15, sdxl, table, clip_tokenizer):
    encoder, bpe, text = sd15, {"l": clip_tokenizer}, table
    if arch == "sdxl":
        encoder, text = sdxl, TableEncoder({"l": 768, "g": 1280})
        bpe = {"l": clip_tokenizer, "g": HFClipBPE(clip_tokenizer.tokenizer, BIGG_PAD_TOKEN)}
    regions = _regions(encoder, ALL_REGIONS)
    with torch.no_grad():
        official = facial_conditioning(encoder, regions, PROMPT, NEGATIVE, bpe, text, arch)
        for weights in ({part: 1.0 for part in REGION_PARTS}, {"eyes": 1}, {}):
            _assert_same(facial_conditioning(encoder, regions, PROMPT, NEGATIVE, bpe, text, arch,
                                             region_weights=weights), official)


@pytest.mark.parametrize("part", REGION_PARTS)
def test_region_weight_zero_is_the_region_not_found(part, sd15, table, clip_tokenizer):
    regions = _regions(sd15, ALL_REGIONS)
    with torch.no_grad():
        dropped = facial_conditioning(sd15, regions, PROMPT, NEGATIVE, {"l": clip_tokenizer}, table,
                                      region_weights={part: 0})
        missing = facial_conditioning(sd15, _without(regions, {part}), PROMPT, NEGATIVE, {"l": clip_tokenizer}, table)
    assert len(dropped.prompt.marked_positions) == len(ALL_REGIONS) - 1
    _assert_same(dropped, missing)


def test_golden_missing_regions_case_is_the_all_regions_case_with_its_absent_parts_at_zero(golden_dir, sd15, table,
                                                                                            clip_tokenizer):
    """G2: the official prompt of the photo missing regions, from the all-regions parse with weight 0 on the
    parts that photo lacks; its conditioning is the one of those regions alone (same region crops)."""
    full = json.loads((golden_dir / "g2_synth_all_regions.json").read_text())
    case = json.loads((golden_dir / "g2_synth_missing_regions.json").read_text())
    assert (full["prompt"], full["face_caption"]) == (case["prompt"], case["face_caption"])
    parts = [REGION_KEYWORD[name] for name in case["region_keys_kept"]]
    absent = {REGION_KEYWORD[name] for name in full["region_keys_kept"]} - set(parts)
    assert absent == {"ears"}

    regions = _regions(sd15, full["keys_selected_get_prepare_facemask"])
    with torch.no_grad():
        dropped = facial_conditioning(sd15, regions, case["prompt"], NEGATIVE, {"l": clip_tokenizer}, table,
                                      caption=case["face_caption"], region_weights=dict.fromkeys(absent, 0))
    fp = dropped.prompt
    assert [REGION_KEYWORD[name] for name in fp.kept_regions] == parts
    assert (fp.aligned_caption, fp.prompt_face, fp.text_only, fp.rule) == (
        case["face_caption_align"], case["prompt_face"], case["prompt_text_only"], case["rule_applied"])
    assert list(fp.clean_ids) == case["clean_input_ids"]
    assert list(fp.marked_positions) == case["facial_token_mask_positions"]
    assert len(fp.kept_regions) == case["num_valid_slots"]

    # The missing-regions photo's own regions (its names, the same crops) give the same conditioning.
    crops = {REGION_KEYWORD[name]: features for name, features in zip(regions.names, regions.features)}
    names = case["keys_selected_get_prepare_facemask"]
    own = RegionFeatures(names, torch.stack([crops[REGION_KEYWORD[name]] for name in names]), regions.zero_features)
    with torch.no_grad():
        missing = facial_conditioning(sd15, own, case["prompt"], NEGATIVE, {"l": clip_tokenizer}, table,
                                      caption=case["face_caption"])
    assert missing.prompt.kept_regions == tuple(case["region_keys_kept"])
    for name in ("text_only", "facial", "negative"):
        assert torch.equal(getattr(dropped, name).embeds, getattr(missing, name).embeds), name


@torch.no_grad()
def test_golden_g4_official_fusion_without_two_regions_from_weight_zero(golden_dir, clip_tokenizer):
    """G4 is the official FacialEncoder with three valid slots of five, at tokens 6, 11, 17 (positive and fused
    negative). A caption whose face, eyes and nose land there, five regions whose face, eye and nose crops are
    G4's valid slots, and weight 0 on ears and mouth must give G4's official outputs."""
    meta = json.loads((golden_dir / "g4_facial_encoder.json").read_text())
    io = load_file(golden_dir / "g4_facial_encoder_io.safetensors")
    kw = meta["attention_mlp_kwargs"]
    encoder = FacialEncoder(kw["embedding_dim"], kw["output_dim"], kw["dim"], kw["depth"], kw["heads"], kw["dim_head"])
    encoder.load_state_dict(load_file(golden_dir / "g4_facial_encoder_state_dict.safetensors"))
    assert meta["valid_id_mask"] == [1, 1, 1, 0, 0]
    # G4's invalid slots 3 and 4 serve as the ear and lip crops, which must not reach the output.
    regions = RegionFeatures(ALL_REGIONS, io["multi_image_embeds"][0, [0, 1, 3, 2, 4]],
                             io["neg_multi_image_embeds"][0, 0])
    negative_ids = standard_ids(NEGATIVE, clip_tokenizer)

    def encode(ids):
        embeds = io["neg_prompt_embeds" if ids["l"] == negative_ids else "prompt_embeds"]
        return embeds, embeds[:, 0]

    caption = "The person has face, with two blue eyes, two ears, and a very long nose, and one mouth."
    out = facial_conditioning(encoder, regions, "", NEGATIVE, {"l": clip_tokenizer}, encode, caption=caption,
                              region_weights={"ears": 0, "mouth": 0})
    assert out.prompt.kept_regions == ("Face", "Left_Eye", "Nose")
    assert list(out.prompt.marked_positions) == meta["class_token_positions"]
    torch.testing.assert_close(out.facial.embeds, io["output"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.negative.embeds, io["output_neg"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("part", REGION_PARTS)
def test_region_weight_half_moves_its_fused_tokens_halfway(part, sd15, table, clip_tokenizer):
    regions = _regions(sd15, ALL_REGIONS)
    with torch.no_grad():
        official = facial_conditioning(sd15, regions, PROMPT, NEGATIVE, {"l": clip_tokenizer}, table)
        half = facial_conditioning(sd15, regions, PROMPT, NEGATIVE, {"l": clip_tokenizer}, table,
                                   region_weights={part: 0.5})
    assert half.prompt == official.prompt
    assert torch.equal(half.text_only.embeds, official.text_only.embeds)
    # The token fused with the part's crop: for eyes and ears the other word's (the official swap).
    slot = [REGION_KEYWORD[name] for name in ALL_REGIONS].index(part)
    row = official.prompt.marked_positions[slot]
    plain = {"facial": table.embed({"l": list(official.prompt.clean_ids)})[0],
             "negative": table.embed({"l": standard_ids(NEGATIVE, clip_tokenizer)})[0]}
    for name, words in plain.items():
        got, fused = getattr(half, name).embeds[0], getattr(official, name).embeds[0]
        assert not torch.equal(fused[row], words[row])
        assert torch.equal(got[row], torch.lerp(words[row], fused[row], 0.5))
        torch.testing.assert_close(got[row], (words[row] + fused[row]) / 2)
        others = [r for r in range(77) if r != row]
        assert torch.equal(got[others], fused[others]), name


@pytest.mark.parametrize("weight", [-1.0, 2.0])
def test_region_weights_outside_zero_to_one_extrapolate(weight, sd15, table, clip_tokenizer):
    regions = _regions(sd15, ALL_REGIONS)
    with torch.no_grad():
        official = facial_conditioning(sd15, regions, PROMPT, NEGATIVE, {"l": clip_tokenizer}, table)
        out = facial_conditioning(sd15, regions, PROMPT, NEGATIVE, {"l": clip_tokenizer}, table,
                                  region_weights={"nose": weight})
    row = official.prompt.marked_positions[ALL_REGIONS.index("Nose")]
    words = table.embed({"l": list(official.prompt.clean_ids)})[0, row]
    fused = official.facial.embeds[0, row]
    torch.testing.assert_close(out.facial.embeds[0, row], words + weight * (fused - words))


def test_unknown_region_weight_keys_are_rejected(sd15, table, clip_tokenizer):
    with pytest.raises(ValueError, match=r"\['face', 'eyes', 'ears', 'nose', 'mouth'\].*\['Left_Eye'\]"):
        facial_conditioning(sd15, _regions(sd15, ALL_REGIONS), PROMPT, NEGATIVE, {"l": clip_tokenizer},
                            table, region_weights={"Left_Eye": 0, "nose": 0.5})
