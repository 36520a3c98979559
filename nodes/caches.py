"""Models shared between the pack's nodes while they are in use."""
import logging
import os
import weakref
from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")


def shared(cache: "weakref.WeakValueDictionary[Hashable, T]", key: Hashable, load: Callable[[], T]) -> T:
    """``load()``, shared by every node that asks for ``key`` while the object is still in use.

    ``cache`` holds no reference of its own, so the object is freed with the last node output that holds it
    (ComfyUI's "Free model and node cache", ``/free`` with ``free_memory``, or a workflow without the node).
    """
    value = cache.get(key)
    if value is None:
        value = load()
        cache[key] = value
    return value


def shared_file(cache: "weakref.WeakValueDictionary[tuple[str, float], T]", path: str,
                load: Callable[[str], T]) -> T:
    """``load(path)``, shared while in use and the file is unchanged on disk; each read is logged."""
    def read() -> T:
        value = load(path)
        logging.info("[ConsistentID] Loaded %s from %s.", os.path.basename(path), os.path.dirname(path))
        return value
    return shared(cache, (path, os.path.getmtime(path)), read)
