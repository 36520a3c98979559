"""The facial prompt: caption alignment, prompt assembly and marked tokenisation (docs/method.md §3).

Everything here reproduces the official `process_text_with_markers`, `encode_prompt_with_trigger_word`
and `tokenize_and_mask_noun_phrases_ends`, quirks included, because the released weights were trained
with them. Only the official crashes are fixed:

* `<|facial|>` and `<|image|>` typed in the user prompt are removed before anything else (repeatedly, so
  no marker can be re-formed). Officially the first would become a marker and the second token 49408,
  outside the CLIP embedding table. Captions need nothing: their normalisation drops `<`, `|` and `>`.
* A caption over 330 characters gives a prompt without marks while regions stay kept; the official
  FuseModule then crashes. Here the pairing rule of :meth:`FacialPrompt.fused_pairs` fuses nothing.
"""
import re
from dataclasses import dataclass
from typing import Sequence

from .regions import REGION_KEYWORD, REGION_PARTS
from .tokenizer import ClipBPE

CONTEXT_LENGTH = 77
FACIAL = "<|facial|>"
IMAGE = "<|image|>"
FACIAL_ID = 49409  # id of <|facial|> in the official tokenizer, after <|image|> = 49408

DEFAULT_CAPTIONS = {
    "sd15": "The person has one face, one nose, two eyes, two ears, and one mouth.",
    "sdxl": "The person has one face, one nose, two eyes, two ears, and a mouth.",
}
_DETAIL = {"sd15": "Detail:", "sdxl": "; Detail:"}
MAX_CAPTION_CHARS = 330

# Walking the regions in this fixed order (ears before eyes) sets the clause order of the aligned
# caption, hence the eye/ear slot pairing of docs/method.md §3.4.
_MARKER_ORDER = ("Face", "Left_Ear", "Right_Ear", "Left_Eye", "Right_Eye", "Nose", "Upper_Lip", "Lower_Lip")
_CLAUSE_ENDS = ",.;"
_MARK = -1  # marker id for our own walk: no tokenizer id can collide with it


@dataclass(frozen=True)
class FacialPrompt:
    """The official prompt encoding of one prompt.

    `prompt_face` is the marked string that was tokenised, `text_only` the same without markers (the
    text-only branch), `rule` one of prompt_then_detail / reordered_detail_first / caption_over_330_chars,
    `kept_regions` the region names left by the alignment in slot order, `clean_ids` the 77 ids fed to the
    text encoder and `marked_positions` the ascending token positions to fuse (all < 77).
    """

    prompt_face: str
    text_only: str
    rule: str
    aligned_caption: str
    kept_regions: tuple[str, ...]
    clean_ids: tuple[int, ...]
    marked_positions: tuple[int, ...]

    def fused_pairs(self, num_slots: int) -> tuple[tuple[int, int], ...]:
        """(token position, region slot) pairs the FacialEncoder fuses: the i-th marked token with the
        i-th valid slot, as the official FuseModule does; there, differing counts crash (`torch.cat`),
        here the surplus of either side is left unfused. Truncation only loses the last marks, so every
        surviving mark keeps the slot the official pairing gives it."""
        return tuple(zip(self.marked_positions, range(num_slots)))


def strip_markers(text: str) -> str:
    """`text` without `<|facial|>` / `<|image|>`, also those formed by removing an inner one."""
    while FACIAL in text or IMAGE in text:
        text = text.replace(FACIAL, "").replace(IMAGE, "")
    return text


def normalise_caption(caption: str) -> str:
    """Official `remove_duplicate_keywords`: keep words and `.,;!?` only, space-joined; blank every
    repeat of a keyword (case-insensitive), leaving a double space."""
    words = re.findall(r"\b\w+\b|[.,;!?]", caption)
    for keyword in REGION_PARTS:
        seen = False
        for i, word in enumerate(words):
            if word.lower() == keyword:
                if seen:
                    words[i] = ""
                seen = True
    return " ".join(words)


def align_caption(caption: str, region_names: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Official `process_text_with_markers`: mark each region's keyword, keep only the marked clauses.

    Returns the aligned caption and the region names kept, in the given (slot) order: a region whose
    keyword is not in the caption is dropped. Marking is case-sensitive, unlike the dedupe.
    """
    text = normalise_caption(caption)
    features = list(dict.fromkeys(REGION_KEYWORD[name] for name in _MARKER_ORDER if name in region_names))
    missing = set()
    for feature in reversed(features):
        text, found = re.subn(rf"\b{feature}\b", f"{feature} <|{feature}|>", text, count=1)
        if not found:
            missing.add(feature)
    kept = tuple(name for name in region_names if REGION_KEYWORD.get(name) not in missing)

    clauses = []
    for marker in (f"<|{feature}|>" for feature in features):
        # An absent marker gives start = -1, which the official slicing treats as "last character".
        start = text.find(marker)
        end = start + len(marker)
        while start > 0 and text[start - 1] not in _CLAUSE_ENDS:
            start -= 1
        while end < len(text) and text[end] not in _CLAUSE_ENDS:
            end += 1
        clause = text[start:end].strip()
        if clause:
            clauses.append(clause + ",")
            text = text[:start] + text[end:]
    aligned = " ".join(clauses)
    for keyword in REGION_PARTS:
        aligned = aligned.replace(f"<|{keyword}|>", FACIAL)
    return aligned, kept


def marked_ids(text: str, bpe: ClipBPE, marker_id: int = FACIAL_ID) -> list[int]:
    """BOS + ids + EOS of `text`, each `<|facial|>` split off and given `marker_id`, as the official
    tokenizer (where it is the added special token 49409) encodes it: the pieces are BPE'd on their own."""
    ids = [bpe.bos]
    for i, piece in enumerate(text.split(FACIAL)):
        ids += ([marker_id] if i else []) + bpe.encode(piece)
    return ids + [bpe.eos]


def _fit(ids: list[int], pad: int) -> list[int]:
    # Cut without re-inserting EOS, as the official does: the 77th token stays last.
    return ids[:CONTEXT_LENGTH] + [pad] * (CONTEXT_LENGTH - len(ids))


def literal_ids(prompt_face: str, bpe: ClipBPE) -> list[int]:
    """77 ids of the marked prompt for a tokenizer without the `<|facial|>` token, as official SDXL feeds
    its tokenizer 2 (CLIP-G): each marker is BPE'd as the literal text `< | facial | >`, which shifts the
    CLIP-G half of the embedding against the marks (docs/method.md §6, quirk §8.12); cut like `clean_ids`."""
    return _fit([bpe.bos] + bpe.encode(prompt_face) + [bpe.eos], bpe.pad)


def build_facial_prompt(prompt: str, region_names: Sequence[str], bpe: ClipBPE, caption: str | None = None,
                        arch: str = "sd15") -> FacialPrompt:
    """Official `encode_prompt_with_trigger_word` for one prompt (`arch`: sd15 or sdxl)."""
    if arch not in _DETAIL:
        raise ValueError(f"arch must be one of {sorted(_DETAIL)}, not {arch!r}")
    prompt = strip_markers(prompt)
    caption = DEFAULT_CAPTIONS[arch] if caption is None else caption
    aligned, kept = align_caption(caption, region_names)

    detail = _DETAIL[arch]
    prompt_face, rule = prompt + detail + aligned, "prompt_then_detail"
    # The official length test counts every marker as a token.
    if len(marked_ids(prompt_face, bpe)) > CONTEXT_LENGTH:
        prompt_face, rule = detail + aligned + " Caption:" + prompt, "reordered_detail_first"
    # The official tests the raw caption, not the aligned one.
    if len(caption) > MAX_CAPTION_CHARS:
        prompt_face, rule = prompt, "caption_over_330_chars"

    # Each marker marks the token before it (the keyword's last sub-token), in marker-free positions.
    clean, marks = [], []
    for token in marked_ids(prompt_face, bpe, _MARK):
        if token != _MARK:
            clean.append(token)
        elif not marks or marks[-1] != len(clean) - 1:
            marks.append(len(clean) - 1)
    return FacialPrompt(
        prompt_face=prompt_face,
        text_only=prompt_face.replace(FACIAL, ""),
        rule=rule,
        aligned_caption=aligned,
        kept_regions=kept,
        clean_ids=tuple(_fit(clean, bpe.pad)),
        marked_positions=tuple(p for p in marks if p < CONTEXT_LENGTH),
    )


def standard_ids(text: str, bpe: ClipBPE) -> list[int]:
    """SD tokenisation of `text` as diffusers `_encode_prompt` does: BOS, 75 ids at most, EOS, pad to 77."""
    ids = [bpe.bos] + bpe.encode(text)[:CONTEXT_LENGTH - 2] + [bpe.eos]
    return ids + [bpe.pad] * (CONTEXT_LENGTH - len(ids))
