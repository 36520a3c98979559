"""Small helpers every node module shares."""
import os
from collections.abc import Callable
from contextlib import contextmanager
from typing import TypeVar

from ..consistentid_core.errors import ConsistentIDError

CATEGORY = "ConsistentID"

T = TypeVar("T")


@contextmanager
def errors_named(node: str):
    """Let a user-facing error from the core say which node raised it."""
    try:
        yield
    except ConsistentIDError as err:
        raise err.attach_node(node)


def load_cached(cache: dict[str, tuple[float, T]], path: str, load: Callable[[str], T]) -> T:
    """``load(path)``, kept in ``cache`` until the file changes on disk."""
    mtime = os.path.getmtime(path)
    entry = cache.get(path)
    if entry is None or entry[0] != mtime:
        entry = cache[path] = (mtime, load(path))
    return entry[1]
