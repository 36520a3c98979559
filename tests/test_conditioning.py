"""The three conditionings of spec §5.1 (SD1.5) and §6 (SDXL), with a table lookup as the text encoder."""
import pytest
import torch

from consistentid_core.checkpoint import build_facial_encoder, load_checkpoint
from consistentid_core.conditioning import facial_conditioning
from consistentid_core.prompt import build_facial_prompt, literal_ids, standard_ids
from consistentid_core.regions import RegionFeatures
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
