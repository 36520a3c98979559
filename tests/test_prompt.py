"""Facial prompt builder: golden G1/G2 parity, the spec's worked examples and the fixed official crashes."""
import json

import pytest

from clip_vocab import MERGES_TXT_SHA256, VOCAB_JSON_SHA256
from consistentid_core.prompt import (
    DEFAULT_CAPTIONS, FACIAL_ID, build_facial_prompt, literal_ids, marked_ids, normalise_caption, standard_ids,
)
from consistentid_core.tokenizer import BIGG_PAD_TOKEN, HFClipBPE

ALL5 = ["Face", "Left_Eye", "Left_Ear", "Nose", "Upper_Lip"]
BOS, EOS = 49406, 49407
FACE_EYES = "The person has one face, two eyes."


def _g1_mismatches(case: dict, region_keys: list[str], bpe) -> list[str]:
    fp = build_facial_prompt(case["prompt"], region_keys, bpe, case["face_caption"])
    got = {
        "face_caption_align": fp.aligned_caption,
        "region_keys_kept": list(fp.kept_regions),
        "prompt_face": fp.prompt_face,
        "rule_applied": fp.rule,
        "prompt_text_only": fp.text_only,
        "input_ids_with_markers": marked_ids(fp.prompt_face, bpe),
        "clean_input_ids": list(fp.clean_ids),
        "facial_token_mask_positions": list(fp.marked_positions),
        "facial_token_idx_mask": [i < len(fp.marked_positions) for i in range(5)],
    }
    return [f"{case['id']}.{key}: {value!r} != {case[key]!r}" for key, value in got.items() if value != case[key]]


def test_golden_g1_tokenizer_is_the_standard_clip_bpe(golden_dir, clip_tokenizer):
    spec = json.loads((golden_dir / "g1_prompts.json").read_text())["tokenizer"]
    assert (spec["vocab_json_sha256"], spec["merges_txt_sha256"]) == (VOCAB_JSON_SHA256, MERGES_TXT_SHA256)
    assert (clip_tokenizer.bos, clip_tokenizer.eos, clip_tokenizer.pad) == (
        spec["bos_token_id"], spec["eos_token_id"], spec["pad_token_id"])
    assert spec["facial_token_id"] == FACIAL_ID


def test_golden_g1_prompts(golden_dir, clip_tokenizer):
    g1 = json.loads((golden_dir / "g1_prompts.json").read_text())
    assert g1["default_caption"] == DEFAULT_CAPTIONS["sd15"]
    assert g1["cases"]
    mismatches = [m for case in g1["cases"] for m in _g1_mismatches(case, case["region_keys_present"], clip_tokenizer)]
    assert not mismatches, "\n".join(mismatches)


def test_golden_g2_prompt_fields(golden_dir, clip_tokenizer):
    files = sorted(golden_dir.glob("g2_*.json"))
    assert files
    mismatches = []
    for path in files:
        case = json.loads(path.read_text())
        mismatches += _g1_mismatches(case, case["keys_selected_get_prepare_facemask"], clip_tokenizer)
        assert case["region_order_in_facial_mask_and_clip_image"] == case["region_keys_kept"]
    assert not mismatches, "\n".join(mismatches)


def test_caption_normalisation_of_the_default_caption():
    assert normalise_caption(DEFAULT_CAPTIONS["sd15"]) == (
        "The person has one face , one nose , two eyes , two ears , and one mouth .")
    assert normalise_caption("Eyes: light-brown eyes, EYES!") == "Eyes light brown  ,  !"


def test_spec_example_a_infer_prompt_swaps_eyes_and_ears(clip_tokenizer):
    prompt = ("cinematic photo,A man, in a forest, adventuring, 50mm photograph, half-length portrait, film, bokeh, "
              "professional, 4k, highly detailed")
    fp = build_facial_prompt(prompt, ALL5, clip_tokenizer)
    assert fp.aligned_caption == ("The person has one face <|facial|>, two ears <|facial|>, two eyes <|facial|>, "
                                  "one nose <|facial|>, and one mouth <|facial|>,")
    assert fp.prompt_face == prompt + "Detail:" + fp.aligned_caption
    assert fp.marked_positions == (44, 47, 50, 53, 57)
    assert fp.clean_ids[59:] == (EOS,) * 18
    # "ears" (47) receives the Left_Eye slot and "eyes" (50) the Left_Ear slot, as the model was trained.
    assert fp.fused_pairs(len(fp.kept_regions)) == ((44, 0), (47, 1), (50, 2), (53, 3), (57, 4))


def test_spec_example_c_missing_ears_has_no_swap(clip_tokenizer):
    fp = build_facial_prompt("A man, in a forest, adventuring", ["Face", "Left_Eye", "Nose", "Upper_Lip"], clip_tokenizer)
    assert fp.marked_positions == (16, 19, 22, 26)
    assert fp.kept_regions == ("Face", "Left_Eye", "Nose", "Upper_Lip")


def test_spec_example_d_long_prompt_is_reordered_and_cut_without_eos(clip_tokenizer):
    prompt = ("cinematic photo,A man, in a forest, adventuring, wearing a leather jacket and a wide hat, carrying a "
              "heavy backpack, at sunset, dramatic light, 50mm photograph, half-length portrait, film, bokeh, "
              "professional, 4k, highly detailed")
    fp = build_facial_prompt(prompt, ALL5, clip_tokenizer)
    assert fp.rule == "reordered_detail_first"
    assert fp.prompt_face == "Detail:" + fp.aligned_caption + " Caption:" + prompt
    assert fp.marked_positions == (7, 10, 13, 16, 20)
    assert EOS not in fp.clean_ids
    standard = standard_ids(fp.text_only, clip_tokenizer)
    assert standard[76] == EOS and standard[:76] == list(fp.clean_ids[:76])


def test_spec_example_e_inpaint_caption_drops_face(clip_tokenizer):
    regions = list(ALL5)
    # The official inpaint/ControlNet pipeline's default caption has no "face", so its Face region is dropped.
    caption = "The person has one nose, two eyes, two ears, and a mouth."
    fp = build_facial_prompt("a woman", regions, clip_tokenizer, caption=caption)
    assert fp.aligned_caption == ("two ears <|facial|>, two eyes <|facial|>, The person has one nose <|facial|>, "
                                  "and a mouth <|facial|>,")
    assert fp.kept_regions == ("Left_Eye", "Left_Ear", "Nose", "Upper_Lip")
    assert fp.prompt_face.startswith("a womanDetail:two ears")
    assert regions == ALL5  # the caller's list is not pruned in place, unlike the official dict


def test_spec_example_f_sdxl_separator_and_literal_markers_for_clip_g(clip_tokenizer):
    fp = build_facial_prompt("A woman wearing a santa hat", ALL5, clip_tokenizer, arch="sdxl")
    assert fp.prompt_face == ("A woman wearing a santa hat; Detail:The person has one face <|facial|>, two ears "
                              "<|facial|>, two eyes <|facial|>, one nose <|facial|>, and a mouth <|facial|>,")
    assert fp.marked_positions == (14, 17, 20, 23, 27)
    assert fp.clean_ids.index(EOS) == 29
    clip_g = HFClipBPE(clip_tokenizer.tokenizer, BIGG_PAD_TOKEN)
    ids = literal_ids(fp.prompt_face, clip_g)
    assert ids[14:21] == [1710, 27, 347, 11909, 91, 29, 267]  # face < | facial | > ,
    assert ids.index(EOS) == 54 and ids[55:] == [0] * 22


def test_regions_given_as_a_dict_are_not_mutated(clip_tokenizer):
    regions = dict.fromkeys(ALL5, "mask")
    fp = build_facial_prompt("a man", regions, clip_tokenizer, caption="The person has one face and a nose.")
    assert fp.kept_regions == ("Face", "Nose")
    assert list(regions) == ALL5


def test_markers_typed_by_the_user_are_removed(clip_tokenizer):
    plain = build_facial_prompt("a man in a suit", ALL5, clip_tokenizer)
    for prompt in ("a man<|facial|> in a <|image|>suit", "a man in a <|fac<|image|>ial|>suit<|image|>"):
        fp = build_facial_prompt(prompt, ALL5, clip_tokenizer)
        assert fp.prompt_face == plain.prompt_face
        assert fp.marked_positions == plain.marked_positions
        assert fp.clean_ids == plain.clean_ids
        assert max(fp.clean_ids) < 49408


def test_empty_prompt(clip_tokenizer):
    fp = build_facial_prompt("", ALL5, clip_tokenizer)
    assert fp.rule == "prompt_then_detail"
    assert fp.prompt_face == "Detail:" + fp.aligned_caption
    assert fp.clean_ids[:3] == (BOS, 7657, 281)  # detail :
    assert len(fp.marked_positions) == 5


def test_500_word_prompt_keeps_all_marks(clip_tokenizer):
    fp = build_facial_prompt(" ".join(["portrait"] * 500), ALL5, clip_tokenizer)
    assert fp.rule == "reordered_detail_first"
    assert len(fp.clean_ids) == 77 and EOS not in fp.clean_ids
    assert fp.marked_positions == (7, 10, 13, 16, 20)


def test_caption_over_330_chars_yields_no_marks_and_no_fusion(clip_tokenizer):
    caption = "The person has one face, two eyes, " + "a calm look, " * 25 + "and one nose."
    assert len(caption) > 330
    fp = build_facial_prompt("a man on a boat", ALL5, clip_tokenizer, caption=caption)
    assert (fp.rule, fp.prompt_face, fp.text_only) == ("caption_over_330_chars", "a man on a boat", "a man on a boat")
    assert fp.marked_positions == ()
    assert fp.kept_regions == ("Face", "Left_Eye", "Nose")
    assert fp.fused_pairs(len(fp.kept_regions)) == ()
    assert list(fp.clean_ids) == standard_ids("a man on a boat", clip_tokenizer)


def test_marks_lost_to_truncation_pair_the_first_slots(clip_tokenizer):
    # "!" is one token and no clause delimiter, so the eyes clause is pushed past token 77.
    caption = "The person has one face, " + "! " * 100 + "two eyes."
    assert len(caption) <= 330
    fp = build_facial_prompt("a man", ["Face", "Left_Eye"], clip_tokenizer, caption=caption)
    assert fp.kept_regions == ("Face", "Left_Eye")
    assert fp.marked_positions == (7,)
    assert fp.fused_pairs(2) == ((7, 0),)


def test_unknown_arch_is_rejected(clip_tokenizer):
    with pytest.raises(ValueError, match="arch must be one of"):
        build_facial_prompt("a man", ALL5, clip_tokenizer, arch="sd3")


@pytest.mark.parametrize("text", [
    "",
    "a photo of an astronaut riding a horse, (masterpiece:1.2), 4k",
    " ".join(["very detailed photograph"] * 40),
    "A photo of a woman wearing a red scarf, standing in a snowy forest, soft lightDetail:The person has one face ,",
])
def test_standard_ids_match_the_hf_tokenizer(clip_tokenizer, text):
    expected = clip_tokenizer.tokenizer(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
    assert standard_ids(text, clip_tokenizer) == expected


def test_standard_ids_pad_with_the_given_pad(clip_tokenizer):
    ids = standard_ids("a cat", HFClipBPE(clip_tokenizer.tokenizer, BIGG_PAD_TOKEN))
    assert ids[:4] == [BOS, 320, 2368, EOS] and ids[4:] == [0] * 73


def test_text_is_cleaned_with_ftfy_like_the_official_tokenizer(clip_tokenizer):
    assert clip_tokenizer.encode("it\u2019s a \ufb01ne day") == clip_tokenizer.encode("it's a fine day")
