"""The merge step in ComfyUI's own terms: the text-only positive for steps ``0..merge_step``, the facial
positive after (official ``i <= start_merge_step``, docs/method.md §5.2; how: §7.4).

The official pipeline samples with diffusers' Euler, one model evaluation per step at the step's own sigma.
For such a sampler, "step ``i > merge_step``" is "sigma below a boundary strictly between σ_merge and
σ_merge+1", and that is what ComfyUI's conditioning timestep ranges (``start_percent``/``end_percent``, as
ConditioningSetTimestepRange sets them) express. So the positive is one CONDITIONING whose text-only entries
end and whose facial entries start at that boundary, placed for the node's steps and scheduler: it works with
any sampler node and any MODEL, and flows through ControlNet, inpainting and Combine nodes like any other.

Placed for one schedule and sampled with another, the switch still happens at the same noise level, near the
same point of the denoising; the sampler's MODEL from ConsistentID Apply checks every run against the
placement when the run starts (:func:`check_run`) and says so in the log and on this node.
"""
import functools
import logging
from dataclasses import dataclass

import torch

import comfy.model_sampling
import comfy.samplers
from comfy.patcher_extension import WrappersMP
from comfy_api.latest import io

from ..consistentid_core.errors import ConsistentIDError, message
from . import host
from .common import PackNode, node_label, node_schema

TAG_KEY = "consistentid_merge"  # on each entry of the positive: its Placement
WRAPPER_KEY = "consistentid_merge_check"
_DOWN = 0.8  # where the boundary lies from σ_merge to σ_merge+1, in log sigma


@dataclass(frozen=True)
class Placement:
    """Where a Merge Step node put the switch: after ``merge_step`` of ``steps`` steps of ``scheduler``, at
    ``percent`` of the schedule; ``node``/``node_id`` name the node for the run-start check."""
    merge_step: int
    steps: int
    scheduler: str
    percent: float
    node: str
    node_id: str | None


@functools.cache
def _default_sampling():
    # The discrete scaled-linear schedule of SD1.5 and SDXL (ComfyUI's defaults for ModelSamplingDiscrete).
    return comfy.model_sampling.ModelSamplingDiscrete()


def boundary_percent(merge_step: int, steps: int, scheduler: str) -> float:
    """The percent of the schedule whose sigma lies strictly between σ_merge and σ_merge+1 of ``steps`` steps of
    ``scheduler``: 80 % of the way down in log sigma, past the midpoints (1/2, 2/3) where second-order samplers
    evaluate step merge_step again, so those evaluations keep its text-only prompt and none lands on the
    boundary itself. ``percent_to_sigma`` is continuous and decreasing, so bisection finds it."""
    sampling = _default_sampling()
    sigmas = comfy.samplers.calculate_sigmas(sampling, scheduler, steps).tolist()
    above, below = sigmas[merge_step], sigmas[merge_step + 1]
    target = above ** (1 - _DOWN) * below ** _DOWN
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        if sampling.percent_to_sigma(middle) > target:
            low = middle
        else:
            high = middle
    percent = (low + high) / 2
    if not below < sampling.percent_to_sigma(percent) < above:
        raise ConsistentIDError(
            f"Steps {merge_step} and {merge_step + 1} of {steps} steps of '{scheduler}' have the same noise level, "
            f"so no switch can be placed between them.", "Choose another merge_step or scheduler.")
    return percent


def _narrowed(opts: dict, start: float, end: float, facial: bool, node: str) -> dict:
    """An entry's options with its own timestep range cut to its phase; an empty range is refused."""
    own = (opts.get("start_percent", 0.0), opts.get("end_percent", 1.0))
    narrowed = (max(own[0], start), min(own[1], end))
    if narrowed[0] >= narrowed[1]:
        prompt = "facial" if facial else "text-only"
        raise ConsistentIDError(
            f"A {prompt} conditioning's own timestep range ({own[0]:.0%} to {own[1]:.0%}) lies outside the part of "
            f"the schedule the merge step gives it ({start:.0%} to {end:.0%}), so it would never be used.",
            "Widen that conditioning's range (ConditioningSetTimestepRange) or move merge_step.", node)
    return {**opts, "start_percent": narrowed[0], "end_percent": narrowed[1]}


def merge_conditioning(text_only: list, facial: list, placement: Placement) -> list:
    """One positive CONDITIONING: ``text_only`` until the placement's percent, ``facial`` from it."""
    p = placement.percent
    return ([[emb, {**_narrowed(opts, 0.0, p, False, placement.node), TAG_KEY: placement}] for emb, opts in text_only]
            + [[emb, {**_narrowed(opts, p, 1.0, True, placement.node), TAG_KEY: placement}] for emb, opts in facial])


def _run_offset(run: list[float], schedule: list[float]) -> int | None:
    """Index of the placed schedule where the run's sigmas start; ``None`` when the run is not part of it (a
    last sigma of 0 matches any: KSamplerAdvanced's force_full_denoise)."""
    n = len(run)
    for offset in range(len(schedule) - n + 1):
        part = schedule[offset:offset + n]
        if all(abs(a - b) <= 1e-4 * b for a, b in zip(run[:-1], part[:-1])) and (
                run[-1] == 0 or abs(run[-1] - part[-1]) <= 1e-4 * part[-1]):
            return offset
    return None


def run_problem(placement: Placement, sigmas: torch.Tensor, sampling) -> str | None:
    """Why a run over ``sigmas`` with ``sampling`` (the MODEL's model sampling) does not switch after the
    placement's merge step, as a warning naming the node; ``None`` when it does."""
    run = sigmas.detach().float().cpu().tolist()
    boundary = sampling.percent_to_sigma(placement.percent)
    text_steps = sum(1 for sigma in run[:-1] if sigma >= boundary)
    schedule = comfy.samplers.calculate_sigmas(sampling, placement.scheduler, placement.steps).tolist()
    offset = _run_offset(run, schedule) if len(run) > 1 else None
    if offset is not None and text_steps == min(max(placement.merge_step + 1 - offset, 0), len(run) - 1):
        return None
    return message(
        f"This positive was placed for {placement.steps} steps of '{placement.scheduler}' (the facial prompt from "
        f"step {placement.merge_step + 1}), but the sampler runs {len(run) - 1} steps that are not that schedule: "
        f"it uses the facial prompt from its step {text_steps}, at the same noise level.",
        "Set steps and scheduler here to the sampler's (KSamplerAdvanced: its total steps). dpm_2 and uni_pc drop "
        "the schedule's penultimate sigma, so their runs never match exactly.", placement.node)


def check_run(conds: dict, sigmas: torch.Tensor, sampling) -> None:
    """At the start of a sampler run: warn, in the log and on the Merge Step node, for every placement in the
    run's conditionings that this run does not honour exactly."""
    placements = {c[TAG_KEY] for entries in conds.values() for c in entries if TAG_KEY in c}
    for placement in placements:
        problem = run_problem(placement, sigmas, sampling)
        if problem is not None:
            logging.warning(problem)
            host.show_on_node(placement.node_id, problem)


def _check_run(executor, guider, sigmas, *args, **kwargs):
    check_run(host.run_conds(guider), sigmas, host.run_model_sampling(guider))
    return executor(guider, sigmas, *args, **kwargs)


def watch_runs(model_patcher) -> None:
    """Make ``model_patcher`` (a clone) check every sampler run's merge-step placements when the run starts: a
    ``SAMPLER_SAMPLE`` wrapper, once per run."""
    model_patcher.remove_wrappers_with_key(WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY)
    model_patcher.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY, _check_run)


def _merge_step_problem(merge_step: int, steps: int) -> ConsistentIDError | None:
    """The facial prompt is used from step merge_step + 1: that step must exist."""
    if steps >= 2 and 0 <= merge_step <= steps - 2:
        return None
    steps = max(steps, 2)
    return ConsistentIDError(
        f"merge_step {merge_step} leaves no step of a {steps}-step run for the facial prompt (it is used from step "
        f"merge_step + 1; the last step is {steps - 1}).",
        f"Set merge_step from 0 to {steps - 2}: the official 30 of 50 is 60 %, i.e. "
        f"{min(round(steps * 0.6), steps - 2)} for {steps} steps; and set steps to the sampler's.")


def _merge_inputs() -> list:
    return [
        io.Conditioning.Input("text_only", tooltip="Positive for the early steps: the prompt without the facial "
                                                   "features (Facial Encoder's text_only)."),
        io.Conditioning.Input("facial", tooltip="Positive for the steps after merge_step: the prompt with the facial "
                                                "features fused in (Facial Encoder's facial)."),
        io.Int.Input("merge_step", default=30, min=0, max=10000,
                     tooltip="Last step (0-based) that uses the text-only prompt; the official value is 30 of 50. At "
                             "most steps − 2. Counted over the whole schedule, also in KSamplerAdvanced."),
        io.Int.Input("steps", default=50, min=2, max=10000,
                     tooltip="The sampler's total steps; the switch is placed in this schedule."),
        io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                       tooltip="The sampler's scheduler; the switch is placed in this schedule."),
    ]


class _Merge(PackNode):
    @classmethod
    def input_problem(cls, values: dict, complete: bool) -> ConsistentIDError | None:
        merge_step, steps = values.get("merge_step"), values.get("steps")
        return super().input_problem(values, complete) or (
            None if merge_step is None or steps is None else _merge_step_problem(merge_step, steps))

    @classmethod
    def positive(cls, text_only, facial, merge_step, steps, scheduler) -> list:
        placement = Placement(merge_step, steps, scheduler, boundary_percent(merge_step, steps, scheduler),
                              node_label(cls), cls.hidden.unique_id if cls.hidden is not None else None)
        return merge_conditioning(text_only, facial, placement)


class ConsistentIDMergeStep(_Merge):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDMergeStep",
            display_name="ConsistentID Merge Step",
            description="Combines the text-only and the facial positive into one conditioning that uses the "
                        "text-only prompt for steps 0 to merge_step and the facial prompt after, as the official "
                        "ConsistentID (50 steps, merge at 30), through ComfyUI's own conditioning timestep ranges: "
                        "connect it to any sampler's positive, with any MODEL. Set steps and scheduler to the "
                        "sampler's; a run with others switches at the same noise level and is flagged.",
            inputs=_merge_inputs(),
            outputs=[io.Conditioning.Output(display_name="positive",
                                            tooltip="For the sampler's positive (also through ControlNet, "
                                                    "inpainting or Combine nodes).")],
        )

    @classmethod
    def execute(cls, text_only, facial, merge_step, steps, scheduler) -> io.NodeOutput:
        return io.NodeOutput(cls.positive(text_only, facial, merge_step, steps, scheduler))


class MergeStepScheduler(_Merge):
    """The node of workflows made before ConsistentID Merge Step: same inputs and outputs, so they load as saved;
    its MODEL output is its MODEL input, unchanged."""

    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDMergeStepScheduler",
            display_name="ConsistentID Merge Step Scheduler (old)",
            description="Replaced by ConsistentID Merge Step, which needs no MODEL; kept so that older workflows "
                        "and API prompts run as saved. Its positive is ConsistentID Merge Step's; its MODEL output "
                        "is its MODEL input, unchanged.",
            is_deprecated=True,
            inputs=[io.Model.Input("model", tooltip="Passed through unchanged."), *_merge_inputs()],
            outputs=[io.Model.Output(display_name="model", tooltip="The MODEL input, unchanged."),
                     io.Conditioning.Output(display_name="positive", tooltip="For the sampler's positive.")],
        )

    @classmethod
    def execute(cls, model, text_only, facial, merge_step, steps, scheduler) -> io.NodeOutput:
        return io.NodeOutput(model, cls.positive(text_only, facial, merge_step, steps, scheduler))


NODES = [ConsistentIDMergeStep, MergeStepScheduler]
