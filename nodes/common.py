"""Small helpers every node module shares."""
from contextlib import contextmanager

from ..consistentid_core.errors import ConsistentIDError

CATEGORY = "ConsistentID"


@contextmanager
def errors_named(node: str):
    """Let a user-facing error from the core say which node raised it."""
    try:
        yield
    except ConsistentIDError as err:
        raise err.attach_node(node)
