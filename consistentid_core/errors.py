"""Errors a user can act on: each says what is wrong and how to fix it."""


def where(node: str | None = None) -> str:
    """How every message of the pack starts: the pack, and the node as the user sees it."""
    return f"[ConsistentID · {node}]" if node else "[ConsistentID]"


def message(problem: str, fix: str, node: str | None = None) -> str:
    """The one form of every error and warning of the pack: where, what is wrong, what to do."""
    return f"{where(node)} {problem} Fix: {fix}"


class ConsistentIDError(Exception):
    """A problem with the user's inputs or files, with the fix spelled out.

    The core does not know which node called it; the node layer attaches its name
    with :meth:`attach_node` so the message in ComfyUI names the node too.
    """

    def __init__(self, problem: str, fix: str, node: str | None = None):
        self.problem = problem
        self.fix = fix
        self.node = node
        super().__init__(self._text())

    def _text(self) -> str:
        return message(self.problem, self.fix, self.node)

    def attach_node(self, node: str) -> "ConsistentIDError":
        if self.node is None:
            self.node = node
            self.args = (self._text(),)
        return self


class WeightFileError(ConsistentIDError):
    """A model file is missing, unreadable, unsafe or of the wrong layout."""


class InputImageError(ConsistentIDError):
    """An input image cannot be used as it is."""


class NoFaceError(InputImageError):
    """No face was found in one of the reference images."""


class ModelMismatchError(ConsistentIDError):
    """Two inputs belong to different base models (SD1.5 vs SDXL)."""
