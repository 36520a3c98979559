"""The check of every input a pack node declares, against what its schema allows, with the pack's message.

Values reach ``execute`` unchecked in three ways the host's own validation does not see: through a link (its value
is known only when the node runs), from the all-in-one's expansion, and from an API client, which may send a null,
a literal where a link belongs (``"mask": 5``) or NaN (Python's JSON reads it). Each gets a message naming the
input and the fix instead of an ``AttributeError`` deep inside, or a black image.
"""
import math
from collections.abc import Callable

import torch
from comfy_api.latest import io

from ..consistentid_core.errors import ConsistentIDError, WeightFileError
from . import host
from .paths import ModelInput
from .types import VALUE_CHECKS

_LISTED = 20  # allowed values named in a message


def option_problem(schema: io.Schema, values: dict) -> ConsistentIDError | None:
    """The first combo, number, text or switch value of ``values`` that ``schema`` does not allow; an input left
    out or ``None`` is skipped (at queue time a linked input has no value yet)."""
    for spec in schema.inputs:
        value = values.get(spec.id)
        if value is not None:
            problem = _widget_problem(spec, value)
            if problem is not None:
                return problem
    return None


def link_problem(schema: io.Schema, values: dict, complete: bool) -> ConsistentIDError | None:
    """The first value of ``values`` that is not what its socket type carries, or holds NaN or infinity, or, when
    ``complete`` (the node runs, every value known), is missing where required."""
    for spec in schema.inputs:
        value = values.get(spec.id)
        if value is None:
            if complete and not spec.optional:
                return ConsistentIDError(f"{spec.id} has no value (null).",
                                         f"Connect {spec.id} or give it a value. {spec.id}: {spec.tooltip}")
            continue
        if spec.extra_dict.get("rawLink"):  # the all-in-one takes the link itself, not its value
            continue
        check = _socket_check(spec)
        if check is None:
            continue
        noun, fits = check
        if not fits(value):
            return ConsistentIDError(
                f"{spec.id} is {_described(value)}, not {noun}.",
                f"Link {spec.id} to an output of type {spec.get_io_type()}. {spec.id}: {spec.tooltip}")
        if not _finite(value):
            return ConsistentIDError(
                f"{spec.id} holds NaN or infinite values, which would turn the image black.",
                f"Check the node that makes {spec.id} (a mask or image from arithmetic on empty or zero inputs), "
                f"or give {spec.id} finite values.")
    return None


def _widget_problem(spec, value) -> ConsistentIDError | None:
    if isinstance(spec, ModelInput):
        return _missing_model(spec, value) if isinstance(value, str) else _combo_problem(spec, value)
    if isinstance(spec, io.Combo.Input):
        return _combo_problem(spec, value)
    if isinstance(spec, (io.Int.Input, io.Float.Input)):
        return _number_problem(spec, value)
    if isinstance(spec, io.String.Input) and not isinstance(value, str):
        return ConsistentIDError(f"{spec.id} is {_described(value)}, not text.",
                                 f"Give {spec.id} a text. {spec.id}: {spec.tooltip}")
    if isinstance(spec, io.Boolean.Input) and not isinstance(value, bool):
        return ConsistentIDError(f"{spec.id} is {_described(value)}, not true or false.",
                                 f"Set {spec.id} to true or false. {spec.id}: {spec.tooltip}")
    return None


def _missing_model(spec: ModelInput, value: str) -> WeightFileError | None:
    try:
        spec.locate(value)
    except WeightFileError as err:
        return err
    return None


def _combo_problem(spec: io.Combo.Input, value) -> ConsistentIDError | None:
    if isinstance(value, str) and value in spec.options:
        return None
    listed = ", ".join(map(repr, spec.options[:_LISTED]))
    more = f" … ({len(spec.options)} in all)" if len(spec.options) > _LISTED else ""
    return ConsistentIDError(f"{spec.id} is {value!r}, which is not one of its values: {listed}{more}.",
                             f"Set {spec.id} to one of these values. {spec.id}: {spec.tooltip}")


def _number_problem(spec: io.Int.Input | io.Float.Input, value) -> ConsistentIDError | None:
    integral = isinstance(spec, io.Int.Input)
    step = spec.step if integral and spec.step and spec.step > 1 else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if ((not integral or float(value).is_integer()) and (spec.min is None or value >= spec.min)
                and (spec.max is None or value <= spec.max) and (step is None or value % step == 0)):
            return None
    allowed = ("a whole number" if integral else "a number") + ("" if spec.min is None else f" from {spec.min}") + (
        "" if spec.max is None else f" to {spec.max}") + (f", a multiple of {step}" if step else "")
    return ConsistentIDError(f"{spec.id} is {value!r}; it must be {allowed}.",
                             f"Set {spec.id} to {allowed}. {spec.id}: {spec.tooltip}")


def _tensor_of_rank(*ranks: int) -> Callable[[object], bool]:
    return lambda value: isinstance(value, torch.Tensor) and value.ndim in ranks and value.is_floating_point()


def _is_conditioning(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], torch.Tensor)
        and isinstance(entry[1], dict) for entry in value)


# Sockets of the host's own types: what their values are, as a noun and a test.
_HOST_SOCKETS = {
    "IMAGE": ("an image batch [batch, height, width, channels]", _tensor_of_rank(4)),
    "MASK": ("a mask [height, width] or [batch, height, width]", _tensor_of_rank(2, 3)),
    "CONDITIONING": ("a conditioning (a list of [embedding, options] entries)", _is_conditioning),
}


def _socket_check(spec) -> tuple[str, Callable[[object], bool]] | None:
    io_type = str(spec.get_io_type())
    if io_type in _HOST_SOCKETS:
        return _HOST_SOCKETS[io_type]
    if io_type in host.OBJECT_SOCKETS:
        kind = host.OBJECT_SOCKETS[io_type]()
        return f"a {io_type} ({kind.__name__})", lambda value: isinstance(value, kind)
    return VALUE_CHECKS.get(io_type)


def _finite(value) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value).all())
    if _is_conditioning(value):
        return all(bool(torch.isfinite(embedding).all()) and (
            not isinstance(options.get("pooled_output"), torch.Tensor)
            or bool(torch.isfinite(options["pooled_output"]).all())) for embedding, options in value)
    return True


def _described(value) -> str:
    if isinstance(value, bool):
        return f"the switch value {value}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "…"
        return f"the text {shown!r}"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)} ({str(value.dtype).removeprefix('torch.')})"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return f"a {type(value).__name__}"
