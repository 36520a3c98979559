"""What every node of the pack shares: its schema frame, its name in messages, the check of its options, and
models shared between nodes."""
import dataclasses
import logging
import os
import weakref
from collections.abc import Callable, Hashable
from contextlib import contextmanager
from typing import TypeVar

from comfy_api.latest import io

from ..consistentid_core.errors import ConsistentIDError, WeightFileError, message
from .paths import ModelInput
from .search_aliases import SEARCH_ALIASES

CATEGORY = "ConsistentID"
_PREFIX = "ConsistentID "  # of every display name; a step inside the all-in-one is named without it
_LISTED = 20  # allowed values named in a message

T = TypeVar("T")
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
    """A node of the pack: it checks every combo and number input itself, since the host checks no V3 combo and
    nothing that arrives through a link or from the all-in-one's expansion, and its errors name it."""

    @classmethod
    def input_problem(cls, values: dict) -> ConsistentIDError | None:
        """What is wrong with ``values``; a linked input is ``None`` until its value arrives."""
        return _option_problem(cls.define_schema(), values)

    @classmethod
    def check(cls, **values) -> None:
        """Raise the first problem of ``values``, named after the node."""
        problem = cls.input_problem(values)
        if problem is not None:
            raise problem.attach_node(node_label(cls))

    @classmethod
    def validate_inputs(cls, **values) -> bool:
        # Taking **values switches off the host's own min/max and combo checks of every input (execution.py skips
        # them for a validator with **kwargs): input_problem replaces them, with the pack's message naming the
        # node and the fix (tests/host/test_options_and_memory.py). Raised, not returned: the host repeats a
        # returned message once per input (each marked as the culprit), while a raised one is reported once.
        cls.check(**values)
        return True

    @classmethod
    @contextmanager
    def running(cls, **options):
        """The body of ``execute``: ``options`` checked (linked values are known only now), and an error of the
        pack raised inside named after the node."""
        cls.check(**options)
        try:
            yield
        except ConsistentIDError as err:
            raise err.attach_node(node_label(cls))


def _option_problem(schema: io.Schema, values: dict) -> ConsistentIDError | None:
    """The first combo or number value of ``values`` that ``schema`` does not allow."""
    for spec in schema.inputs:
        value = values.get(spec.id)
        if value is None:
            continue
        if isinstance(spec, ModelInput) and isinstance(value, str):
            problem = _missing_model(spec, value)
        elif isinstance(spec, io.Combo.Input):
            problem = _combo_problem(spec, value)
        elif isinstance(spec, (io.Int.Input, io.Float.Input)):
            problem = _number_problem(spec, value)
        else:
            continue
        if problem is not None:
            return problem
    return None


def _missing_model(spec: ModelInput, value: str) -> WeightFileError | None:
    try:
        spec.locate(value)
    except WeightFileError as err:
        return err
    return None


def _combo_problem(spec: io.Combo.Input, value) -> ConsistentIDError | None:
    if value in spec.options:
        return None
    listed = ", ".join(map(repr, spec.options[:_LISTED]))
    more = f" … ({len(spec.options)} in all)" if len(spec.options) > _LISTED else ""
    return ConsistentIDError(f"{spec.id} is {value!r}, which is not one of its values: {listed}{more}.",
                             f"Set {spec.id} to one of these values. {spec.id}: {spec.tooltip}")


def _number_problem(spec: io.Int.Input | io.Float.Input, value) -> ConsistentIDError | None:
    integral = isinstance(spec, io.Int.Input)
    step = spec.step if integral and spec.step and spec.step > 1 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if ((not integral or float(value).is_integer()) and (spec.min is None or value >= spec.min)
                and (spec.max is None or value <= spec.max) and (step is None or value % step == 0)):
            return None
    allowed = ("a whole number" if integral else "a number") + ("" if spec.min is None else f" from {spec.min}") + (
        "" if spec.max is None else f" to {spec.max}") + (f", a multiple of {step}" if step else "")
    return ConsistentIDError(f"{spec.id} is {value!r}; it must be {allowed}.",
                             f"Set {spec.id} to {allowed}. {spec.id}: {spec.tooltip}")


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
