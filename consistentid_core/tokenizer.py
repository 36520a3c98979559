"""The CLIP BPE interface the prompt code needs, and an adapter for transformers' `CLIPTokenizer`.

The official pipeline adds `<|image|>` and `<|facial|>` to its tokenizer as special tokens. We never add
tokens to anyone's tokenizer: the prompt code splits the text on its markers and BPE-encodes the pieces
itself, which is exactly what a tokenizer with added special tokens does.
"""
from typing import Any, Protocol

import ftfy

# Official SDXL's bigG tokenizer is configured with `!` as its pad token (id 0), not EOS.
BIGG_PAD_TOKEN = "!"


class ClipBPE(Protocol):
    bos: int
    eos: int
    pad: int

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text`, without BOS/EOS; special markers are not handled."""
        ...


class HFClipBPE:
    """Adapts a transformers `CLIPTokenizer`, slow or fast (ComfyUI's `SDTokenizer.tokenizer` is one).

    `pad_token` replaces the tokenizer's own: official bigG's is `BIGG_PAD_TOKEN`, while ComfyUI's CLIP-G
    tokenizer is CLIP-L's, whose pad token is EOS. The tokenizer's `model_max_length` is never used:
    ComfyUI's config says 8192.
    """

    def __init__(self, hf_tokenizer: Any, pad_token: str | None = None):
        self.tokenizer = hf_tokenizer
        self.bos = hf_tokenizer.bos_token_id
        self.eos = hf_tokenizer.eos_token_id
        self.pad_token = hf_tokenizer.pad_token if pad_token is None else pad_token
        self.pad = hf_tokenizer.convert_tokens_to_ids(self.pad_token)

    def encode(self, text: str) -> list[int]:
        # The pad token is a special token of the official tokenizers: each occurrence is split off the raw
        # text and encoded alone. With bigG's `!` this turns "wow!!!" into [wow, 0, 0, 0], where plain BPE
        # merges "!!!" into one token.
        ids = []
        for i, piece in enumerate(text.split(self.pad_token)):
            ids += ([self.pad] if i else []) + self._bpe(piece)
        return ids

    def _bpe(self, text: str) -> list[int]:
        # The official (slow) tokenizer cleans text with ftfy; the fast one of transformers 5 does not, so
        # apply it here (it is idempotent, so a slow tokenizer applying it again changes nothing).
        # tokenize() rather than encode(): no special tokens and no too-long warning.
        return self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(ftfy.fix_text(text)))
