"""The exact merge step: the text-only positive for steps ``0..merge_step``, the facial positive after
(official ``i <= start_merge_step``, docs/method.md §5.2; how: §7.4), for every sampler and scheduler.

ComfyUI switches conditionings by sigma only (ConditioningSetTimestepRange), which is not exact for
samplers that evaluate a step on both sides of a sigma boundary (heun, dpm_2, ...). So the switch is made
per model evaluation, by step:

* ``MergeStepScheduler`` outputs one positive CONDITIONING holding the text-only and the facial entries,
  each tagged under ``TAG_KEY`` with a :class:`MergePhase`, and the MODEL to sample with: its input MODEL
  cloned, with the wrappers below. Facial entries carry an empty timestep range (100 %–100 %, i.e. sigma 0,
  which no sampler evaluates), so a MODEL without the wrappers samples with the text-only prompt.
* ``sampling_step`` tells each model evaluation its step in the run; ``SAMPLER_SAMPLE`` finds where the run
  starts in the full schedule of the tag's steps and scheduler (KSamplerAdvanced's ``start_at_step``;
  KSampler's schedule with or without the penultimate sigma it drops for dpm_2/uni_pc), and
  ``CALC_COND_BATCH`` passes on only the entries of the evaluation's phase, the facial ones with their own
  timestep range restored.
"""
import logging
from dataclasses import dataclass

import torch

import comfy.samplers
from comfy.patcher_extension import WrappersMP
from comfy_api.latest import io

from ..consistentid_core.errors import ConsistentIDError
from .common import PackNode, node_schema
from .sampling_step import OPTION_KEY, install_step_tracking

TAG_KEY = "consistentid_merge"
WRAPPER_KEY = "consistentid_merge"
_RUN_KEY = "consistentid_merge_run"
_INACTIVE = {"start_percent": 1.0, "end_percent": 1.0}


@dataclass(frozen=True)
class MergePhase:
    facial: bool
    merge_step: int
    steps: int
    scheduler: str
    percent_range: tuple[float, float] = (0.0, 1.0)  # the facial entry's own timestep range

    def active(self, step: int) -> bool:
        return (step > self.merge_step) == self.facial


def merge_conditioning(text_only: list, facial: list, merge_step: int, steps: int, scheduler: str) -> list:
    """One positive CONDITIONING whose entries switch from ``text_only`` to ``facial`` after ``merge_step``."""
    text_phase = MergePhase(False, merge_step, steps, scheduler)
    out = [[emb, {**opts, TAG_KEY: text_phase}] for emb, opts in text_only]
    for emb, opts in facial:
        phase = MergePhase(True, merge_step, steps, scheduler,
                           (opts.get("start_percent", 0.0), opts.get("end_percent", 1.0)))
        out.append([emb, {**opts, **_INACTIVE, TAG_KEY: phase}])
    return out


def _schedule_offset(sigmas: torch.Tensor, sampling, steps: int, scheduler: str) -> int | None:
    """Index of the full schedule where the run's ``sigmas`` start; ``None`` when they are not part of it."""
    full = comfy.samplers.calculate_sigmas(sampling, scheduler, steps)
    longer = comfy.samplers.calculate_sigmas(sampling, scheduler, steps + 1)
    n = len(sigmas)
    # force_full_denoise may have set the run's last sigma to 0.
    for schedule in (full, torch.cat([longer[:-2], longer[-1:]])):
        schedule = schedule.float().cpu()
        for offset in range(len(schedule) - n + 1):
            if torch.allclose(sigmas[:-1], schedule[offset:offset + n - 1], rtol=1e-5, atol=0) and (
                    sigmas[-1] == 0 or torch.isclose(sigmas[-1], schedule[offset + n - 1], rtol=1e-5, atol=0)):
                return offset
    return None


class _Run:
    """One sampler run: its sigmas and where they sit in each tagged schedule."""

    def __init__(self, sigmas: torch.Tensor, sampling):
        self.sampling = sampling
        self.cpu_sigmas = sigmas.detach().float().cpu()
        self._offsets: dict[tuple[int, str], int] = {}
        self._restored: dict[int, dict] = {}

    def offset(self, phase: MergePhase) -> int:
        key = (phase.steps, phase.scheduler)
        if key not in self._offsets:
            offset = _schedule_offset(self.cpu_sigmas, self.sampling, *key) if len(self.cpu_sigmas) > 1 else 0
            if offset is None:
                offset = 0
                if self.cpu_sigmas[0] < float(self.sampling.sigma_max) * (1 - 1e-5):
                    logging.warning(
                        "ConsistentID merge step: this sampler run starts partway through a schedule that is not "
                        f"{phase.steps} steps of '{phase.scheduler}', so merge_step counts from its first step. "
                        "For KSamplerAdvanced, set MergeStepScheduler's steps and scheduler to the sampler's.")
            self._offsets[key] = offset
        return self._offsets[key]

    def activated(self, cond: dict) -> dict:
        if id(cond) not in self._restored:
            start, end = cond[TAG_KEY].percent_range
            self._restored[id(cond)] = {**cond, "timestep_start": self.sampling.percent_to_sigma(start),
                                        "timestep_end": self.sampling.percent_to_sigma(end)}
        return self._restored[id(cond)]

    def select(self, conds: list, step: int) -> list:
        out = []
        for cond in conds:
            if cond is None or not any(TAG_KEY in c for c in cond):
                out.append(cond)
                continue
            kept = [c for c in cond if TAG_KEY not in c or c[TAG_KEY].active(step + self.offset(c[TAG_KEY]))]
            out.append([self.activated(c) if TAG_KEY in c and c[TAG_KEY].facial else c for c in kept])
        return out


def _sampler_sample(executor, guider, sigmas, extra_args, *args, **kwargs):
    if any(TAG_KEY in c for conds in guider.conds.values() for c in conds):
        extra_args["model_options"][_RUN_KEY] = _Run(sigmas, guider.inner_model.model_sampling)
    return executor(guider, sigmas, extra_args, *args, **kwargs)


def _calc_cond_batch(executor, model, conds, x_in, timestep, model_options):
    run = model_options.get(_RUN_KEY)
    if run is not None:
        conds = run.select(conds, model_options["transformer_options"][OPTION_KEY].step)
    return executor(model, conds, x_in, timestep, model_options)


_WRAPPERS = ((WrappersMP.SAMPLER_SAMPLE, _sampler_sample), (WrappersMP.CALC_COND_BATCH, _calc_cond_batch))


def with_merge_wrapper(model_patcher):
    """A clone of ``model_patcher`` that honours MergeStepScheduler conditionings exactly."""
    patched = model_patcher.clone()
    install_step_tracking(patched)
    for kind, wrapper in _WRAPPERS:
        patched.remove_wrappers_with_key(kind, WRAPPER_KEY)
        patched.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper)
    return patched


class MergeStepScheduler(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDMergeStepScheduler",
            display_name="ConsistentID Merge Step Scheduler",
            description="Combines the text-only and the facial positive into one conditioning that uses the "
                        "text-only prompt for steps 0 to merge_step and the facial prompt after, exactly per "
                        "sampler step as the official ConsistentID (50 steps, merge at 30), for every sampler "
                        "and scheduler. Sample with the MODEL it outputs: the switch happens in that model.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL from ConsistentID Apply; its copy at this node's "
                                                "output is the one to sample with."),
                io.Conditioning.Input("text_only", tooltip="Positive for the early steps: the prompt without "
                                                           "the facial features (FacialEncoder's text_only)."),
                io.Conditioning.Input("facial", tooltip="Positive for the steps after merge_step: the prompt "
                                                        "with the facial features fused in."),
                io.Int.Input("merge_step", default=30, min=0, max=10000,
                             tooltip="Last step (0-based) that uses the text-only prompt; the official value is "
                                     "30 of 50. Must be below steps. Counted over the whole schedule, also in "
                                     "KSamplerAdvanced."),
                io.Int.Input("steps", default=50, min=1, max=10000,
                             tooltip="The sampler's total steps; used to place KSamplerAdvanced's "
                                     "start_at_step in the schedule."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="The sampler's scheduler; used with steps to place a partial "
                                       "(KSamplerAdvanced) run in the full schedule."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.Conditioning.Output(display_name="positive")],
        )

    @classmethod
    def input_problem(cls, values: dict) -> ConsistentIDError | None:
        merge_step, steps = values.get("merge_step"), values.get("steps")
        return super().input_problem(values) or (
            None if merge_step is None or steps is None else _merge_step_problem(merge_step, steps))

    @classmethod
    def execute(cls, model, text_only, facial, merge_step, steps, scheduler) -> io.NodeOutput:
        cls.check(merge_step=merge_step, steps=steps, scheduler=scheduler)
        return io.NodeOutput(with_merge_wrapper(model), merge_conditioning(text_only, facial, merge_step, steps,
                                                                           scheduler))


def _merge_step_problem(merge_step: int, steps: int) -> ConsistentIDError | None:
    """A merge step at or past the last step would never use the facial prompt."""
    if steps >= 1 and 0 <= merge_step < steps:
        return None
    steps = max(steps, 1)
    return ConsistentIDError(
        f"merge_step {merge_step} is not a step of a {steps}-step run (0 to {steps - 1}), so the facial prompt "
        f"would never be used.",
        f"Set merge_step below steps: the official 30 of 50 is 60 %, i.e. {min(round(steps * 0.6), steps - 1)} "
        f"for {steps} steps; and set steps to the sampler's.")


NODES = [MergeStepScheduler]
