"""The three prompt embeddings of a ConsistentID generation (docs/method.md §5.1 for SD1.5, §6 for SDXL).

* text-only positive: the prompt without markers, used up to the merge step;
* facial positive: the marked prompt with the facial region features fused into its marked tokens;
* negative: the negative prompt with the *uncond* region features fused at the positive prompt's
  marked positions (the official "fused negative", used in every step).

A weight per facial region (port extension) scales or drops each region's part in the facial positive and
the negative.

The text encoder is passed in as a function, so the host's CLIP (with its device management,
clip-skip and LoRAs) does the encoding and this module stays host-independent.
"""
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from .facial_encoder import FacialEncoder
from .prompt import CONTEXT_LENGTH, FacialPrompt, build_facial_prompt, literal_ids, standard_ids
from .regions import REGION_KEYWORD, REGION_PARTS, RegionFeatures
from .tokenizer import ClipBPE

# token ids per text encoder ("l", and "g" for SDXL) → (embeddings [1, 77, D], pooled output). As in the
# host, the pooled output is the last encoder's row at the first EOS of its ids, or at its last row if none.
# The ids of each encoder are 77 long, or a lone BOS.
TextEncode = Callable[[Mapping[str, list[int]]], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Embedding:
    embeds: torch.Tensor  # [1, 77, D]
    pooled: torch.Tensor


@dataclass
class FacialConditioning:
    text_only: Embedding
    facial: Embedding
    negative: Embedding
    prompt: FacialPrompt


def facial_conditioning(encoder: FacialEncoder, regions: RegionFeatures, prompt: str, negative_prompt: str,
                        bpe: Mapping[str, ClipBPE], encode: TextEncode, arch: str = "sd15",
                        caption: str | None = None,
                        region_weights: Mapping[str, float] | None = None) -> FacialConditioning:
    """Encode and fuse the prompts for one reference image.

    ``bpe`` holds the tokenizer of each text encoder: ``{"l": …}`` for SD1.5, ``{"l": …, "g": …}`` for
    SDXL, whose CLIP-G half sees the marked prompt as literal text and whose text-only branch uses the
    raw prompt (both official quirks, docs/method.md §8.12).

    SDXL's pooled output is bigG's at the official row: official SDXL's text-encoder config keeps a legacy
    EOS id, so transformers pools the row of the largest id. That is the EOS, where the host pools too, or
    BOS (row 0) when the literal-marker ids overflow 77 and lose their EOS, where the host would pool the
    last row. Under causal attention row 0 sees BOS alone, so encoding BOS alone gives that vector.

    ``region_weights`` maps a region part of :data:`REGION_PARTS` to its weight (a missing part weighs 1;
    other keys raise ``ValueError``). Weight 1 is the official result, bit for bit. Weight 0 drops the
    part's regions before the prompt is built, exactly as the official code drops a region the parse did
    not find: its caption word loses its mark and the later regions move up a slot (docs/method.md §3.2,
    §3.4). Any other weight ``w`` moves the token fused with the region's features from the plain text
    embedding ``p`` towards the fused one ``f``: ``lerp(p, f, w) = p + w·(f − p)``; below 0 and above 1 it
    extrapolates. The weight follows the region's features, not its caption word: when an eye and an ear
    region are both kept, the official pairing puts the eye weight on the word "ears" (§3.4). The fused
    negative is weighted the same way at the same tokens, so that it stays the unconditional counterpart
    of the facial positive.
    """
    weights = _region_weights(region_weights)
    names = [name for name in regions.names if weights[REGION_KEYWORD[name]] != 0]
    facial_prompt = build_facial_prompt(prompt, names, bpe["l"], caption, arch)
    marked = {"l": list(facial_prompt.clean_ids)}
    if "g" in bpe:
        marked["g"] = literal_ids(facial_prompt.prompt_face, bpe["g"])
    text = prompt if arch == "sdxl" else facial_prompt.text_only

    def standard(string: str) -> dict[str, list[int]]:
        return {name: standard_ids(string, tokenizer) for name, tokenizer in bpe.items()}

    kept = facial_prompt.kept_regions
    cond, uncond, slot_mask = regions.slots(kept)
    token_mask = torch.zeros(1, CONTEXT_LENGTH, dtype=torch.bool)
    token_mask[0, list(facial_prompt.marked_positions)] = True
    # Weight-1 tokens are left out, so the official result stays bit-exact.
    token_weights = {position: weight for position, slot in facial_prompt.fused_pairs(len(kept))
                     if (weight := weights[REGION_KEYWORD[kept[slot]]]) != 1}

    def encoded(ids: Mapping[str, list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, pooled = encode(ids)
        if "g" in ids and bpe["g"].eos not in ids["g"]:
            _, pooled = encode({name: row[:1] for name, row in ids.items()})
        return embeds, pooled

    def fused(ids: Mapping[str, list[int]], features: torch.Tensor) -> Embedding:
        embeds, pooled = encoded(ids)
        out = encoder(embeds, features[None], token_mask, slot_mask[None]).to(embeds.device, embeds.dtype)
        for position, weight in token_weights.items():
            out[0, position] = torch.lerp(embeds[0, position], out[0, position], weight)
        return Embedding(out, pooled)

    return FacialConditioning(
        text_only=Embedding(*encoded(standard(text))),
        facial=fused(marked, cond),
        negative=fused(standard(negative_prompt), uncond),
        prompt=facial_prompt,
    )


def _region_weights(region_weights: Mapping[str, float] | None) -> dict[str, float]:
    """The weight of every region part, 1 where ``region_weights`` has none."""
    weights = dict(region_weights or {})
    unknown = sorted(set(weights) - set(REGION_PARTS))
    if unknown:
        raise ValueError(f"region_weights keys must be among {list(REGION_PARTS)}, got {unknown}")
    return {part: weights.get(part, 1.0) for part in REGION_PARTS}
