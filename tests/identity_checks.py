"""Checks shared by the identity tests with and without a host: bitwise comparison of identities, and pickles
whose loading would leave a trace."""
import pickle

import torch

FIX = "Fix: Select a file written by ConsistentID Save Identity, or encode the photos again."


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The bytes of ``t``, so NaN (a photo without face) compares equal to itself."""
    return t.contiguous().view(torch.uint8)


def assert_same_identity(got, expected, source: dict | None = None) -> None:
    """Two identities: every tensor bit for bit (dtypes included), the region names, the adapter, and the
    source (``source`` if given)."""
    assert (got.cond_tokens is None) == (expected.cond_tokens is None)
    pairs = [(got.uncond_tokens, expected.uncond_tokens), (got.regions.features, expected.regions.features),
             (got.regions.zero_features, expected.regions.zero_features), (got.arcface, expected.arcface),
             (got.faces, expected.faces)]
    if got.cond_tokens is not None:
        pairs.append((got.cond_tokens, expected.cond_tokens))
    for a, b in pairs:
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))
    assert got.regions.names == expected.regions.names and got.adapter == expected.adapter
    assert dict(got.source) == dict(expected.source if source is None else source)


class Payload:
    """Unpickled, it creates the file ``path`` (as a malicious pickle could run anything)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def pickles(marker) -> dict[str, bytes]:
    """Pickles whose loading creates ``marker``: plain (protocols 0 and 4), and one whose 9th byte is the ``{``
    a safetensors header starts with, so it gets past a sniff of the first bytes."""
    plain = pickle.dumps(Payload(marker), protocol=0)
    return {"evil_p0.safetensors": plain, "evil_p4.safetensors": pickle.dumps(Payload(marker), protocol=4),
            "evil_brace.safetensors": b"S'123456{'\n0" + plain}
