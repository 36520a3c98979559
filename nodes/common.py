"""The frame of every node of the pack: its schema, its name in messages, and the check of every input it
declares before its ``execute`` runs."""
import dataclasses
import functools
import inspect
import logging

from comfy_api.latest import io

from ..consistentid_core.errors import ConsistentIDError, message
from .input_checks import link_problem, option_problem
from .search_aliases import SEARCH_ALIASES

CATEGORY = "ConsistentID"
_PREFIX = "ConsistentID "  # of every display name; a step inside the all-in-one is named without it
# ComfyUI 0.3.64 (the floor) has no search_aliases in its schema; there the nodes are found by name only.
_HOST_HAS_SEARCH_ALIASES = "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}

_display_names: dict[str, str] = {}  # node id -> display name, of every node built with node_schema


def node_schema(**fields) -> io.Schema:
    """The schema of a pack node, in the pack's category.

    Its hidden inputs tell a node that another node (the all-in-one) expanded into it which node that is, so its
    messages name the node the user sees.
    """
    _display_names[fields["node_id"]] = fields["display_name"]
    if _HOST_HAS_SEARCH_ALIASES and fields["node_id"] in SEARCH_ALIASES:
        fields["search_aliases"] = SEARCH_ALIASES[fields["node_id"]]
    return io.Schema(category=CATEGORY, hidden=[io.Hidden.unique_id, io.Hidden.dynprompt], **fields)


def node_label(cls) -> str:
    """The node as messages name it: its display name, or "<expanding node> › <step>" inside the all-in-one."""
    own = cls.define_schema().display_name
    hidden = cls.hidden
    dynprompt = hidden.dynprompt if hidden is not None else None
    parent = dynprompt.get_parent_node_id(hidden.unique_id) if dynprompt is not None else None
    if parent is None:
        return own
    parent_type = dynprompt.get_node(parent)["class_type"]
    return f"{_display_names.get(parent_type, parent_type)} › {own.removeprefix(_PREFIX)}"


def warn(cls, problem: str, fix: str) -> None:
    logging.warning(message(problem, fix, node_label(cls)))


class PackNode(io.ComfyNode):
    """A node of the pack. Every input its schema declares is checked before its ``execute`` runs (so no node
    lists its inputs again), and a pack error raised inside is named after the node as the user sees it."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        execute = cls.__dict__.get("execute")
        # The host's per-run class clones copy the class dict, the checked execute included.
        if execute is not None and not getattr(execute.__func__, "checked", False):
            cls.execute = classmethod(_checked(execute.__func__))

    @classmethod
    def validate_inputs(cls, **values) -> bool:
        # Taking **values switches off the host's own min/max and combo checks of every input (execution.py skips
        # them for a validator with **kwargs), knowingly: the checks below replace them, with the pack's message
        # naming the node and the fix (tests/host/test_options_and_memory.py), and they also cover what the host's
        # miss (NaN, a literal where a link belongs). Raised, not returned: the host repeats a returned message once
        # per input (each marked as the culprit), while a raised one is reported once.
        problem = cls.input_problem(values, complete=False)
        if problem is not None:
            raise problem.attach_node(node_label(cls))
        return True

    @classmethod
    def input_problem(cls, values: dict, complete: bool) -> ConsistentIDError | None:
        """What is wrong with ``values``; ``complete`` when the node runs, every linked value known. A node with a
        rule across inputs adds it here."""
        schema = cls.define_schema()
        return option_problem(schema, values) or link_problem(schema, values, complete)


def _checked(execute):
    signature = inspect.signature(execute)
    _var_keyword = next((p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)

    @functools.wraps(execute)
    def run(cls, *args, **kwargs):
        bound = signature.bind(cls, *args, **kwargs).arguments
        # An execute may take some inputs as **keywords (the Facial Encoder's region weights).
        values = {**bound.pop(_var_keyword, {}), **bound} if _var_keyword else bound
        problem = cls.input_problem(values, complete=True)
        if problem is not None:
            raise problem.attach_node(node_label(cls))
        try:
            return execute(cls, *args, **kwargs)
        except ConsistentIDError as err:
            raise err.attach_node(node_label(cls))

    run.checked = True
    return run
