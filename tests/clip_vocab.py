"""The standard CLIP BPE tokenizer for tests, rebuilt from the vocabulary open_clip_torch ships.

The prompt tests need the exact tokenizer of SD1.x (the one ComfyUI ships in `comfy/sd1_tokenizer/`
and the golden G1 used) without depending on a ComfyUI checkout. open_clip's
`bpe_simple_vocab_16e6.txt.gz` holds the same merges; `vocab.json` and `merges.txt` are written the way
Hugging Face's CLIP files were made, byte for byte (checked by sha256).
"""
import gzip
import hashlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path

VOCAB_JSON_SHA256 = "e089ad92ba36837a0d31433e555c8f45fe601ab5c221d4f607ded32d9f7a4349"
MERGES_TXT_SHA256 = "9fd691f7c8039210e0fced15865466c65820d09b63988b0174bfe25de299051a"
_DIGESTS = {"vocab.json": VOCAB_JSON_SHA256, "merges.txt": MERGES_TXT_SHA256}
# CLIP keeps the first 49152 - 256 - 2 merges: 256 byte tokens, 256 end-of-word byte tokens, the merges
# and the two specials make a 49408-entry vocabulary.
_N_MERGES = 49152 - 256 - 2


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _open_clip_bpe() -> Path:
    # open_clip is installed without its dependencies: locate its data file without importing it.
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip_torch is not installed; `pip install --no-deps open_clip_torch` provides the CLIP BPE file")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table: printable bytes map to themselves, the rest to 256+n, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(c) for c in printable + [256 + n for n in range(len(extra))]]


def clip_bpe_files() -> dict[str, bytes]:
    """`vocab.json` and `merges.txt` contents, identical to the Hugging Face CLIP files."""
    # The first line of the archive is a file header, not a merge.
    merges = gzip.open(_open_clip_bpe()).read().decode("utf-8").split("\n")[1:_N_MERGES + 1]
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    files = {
        "vocab.json": (json.dumps(vocab, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"),
        "merges.txt": ("#version: 0.2\n" + "\n".join(merges) + "\n").encode("utf-8"),
    }
    for name, expected in _DIGESTS.items():
        if _sha256(files[name]) != expected:
            raise RuntimeError(f"rebuilt {name} differs from the standard CLIP file; open_clip's BPE archive changed")
    return files


def clip_bpe_dir() -> Path:
    """A temp folder holding the two files, written once and shared by test sessions."""
    folder = Path(tempfile.gettempdir()) / f"consistentid-clip-bpe-{VOCAB_JSON_SHA256[:12]}"
    if all((folder / name).is_file() and _sha256((folder / name).read_bytes()) == digest
           for name, digest in _DIGESTS.items()):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in clip_bpe_files().items():
        # Write then rename so a concurrent session never reads half a file.
        fd, tmp = tempfile.mkstemp(dir=folder)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, folder / name)
    return folder


def build_clip_tokenizer():
    """transformers `CLIPTokenizer` on the standard vocabulary, 77 tokens as in SD1.5 pipelines."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(clip_bpe_dir()), model_max_length=77, pad_token="<|endoftext|>")
