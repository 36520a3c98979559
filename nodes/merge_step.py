"""The exact merge step: the text-only positive for steps ``0..merge_step``, the facial positive after
(official ``i <= start_merge_step``, spec §5.2 and §10 item 3), for every sampler and scheduler.

Design
------
ComfyUI switches conditionings by sigma only (ConditioningSetTimestepRange). A sigma boundary is exact
for samplers that evaluate each step once at its own sigma, but not for heun, dpm_2, ...: their extra
evaluations fall on either side of it (COMFYUI_HOST.md §4). So the switch is made per model evaluation:

* ``MergeStepScheduler`` outputs one positive CONDITIONING holding the text-only and the facial entries,
  each tagged under ``TAG_KEY`` with a :class:`MergePhase`. Facial entries carry an empty timestep range
  (100 %–100 %, i.e. sigma 0, which no sampler evaluates), so a MODEL without our wrapper samples with the
  text-only prompt; the node warns when its MODEL input lacks the wrapper.
* :func:`install_merge_wrapper` (ConsistentIDApply calls it) adds two wrappers:
  ``SAMPLER_SAMPLE`` runs once per sampler run: it records the run's sigmas and finds where they start in
  the full schedule of the tag's steps and scheduler (KSamplerAdvanced's ``start_at_step``; KSampler's
  schedule with or without the penultimate sigma it drops for dpm_2/uni_pc).
  ``CALC_COND_BATCH`` runs per model evaluation: it finds the step the evaluation belongs to and passes
  on only the entries of that step's phase, the facial ones with their own timestep range restored.
* Which step: every k-diffusion sampler evaluates the model inside ``for i in trange(len(sigmas) - 1)``;
  the index ``i`` of the frame that loops over this run's ``sigmas`` is the exact step, for the extra
  evaluations of second-order samplers too. The sampler callback is not an exact signal: it fires after
  a step's first evaluation, and heun's end-point evaluation has the same sigma and input as the next
  step's first one. Samplers without such a loop (uni_pc, dpm_fast/adaptive, custom samplers) get the
  step from the sigma, the last schedule sigma at or above it: exact for uni_pc, which evaluates each
  step once at its own sigma.
"""
import logging
import sys
from dataclasses import dataclass

import torch

import comfy.samplers
from comfy.patcher_extension import WrappersMP
from comfy_api.latest import io

from .common import CATEGORY

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
        self.sigmas = sigmas
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

    def step(self, timestep: torch.Tensor) -> int:
        """Index in this run's sigmas of the step the current model evaluation belongs to."""
        frame = sys._getframe(1)
        while frame is not None and frame.f_code is not _sampler_sample.__code__:
            local = frame.f_locals
            if local.get("sigmas") is self.sigmas and isinstance(local.get("i"), int):
                return local["i"]
            frame = frame.f_back
        sigma = float(timestep.max())
        return max(int((self.cpu_sigmas[:-1] >= sigma * (1 - 1e-5)).sum()) - 1, 0)

    def activated(self, cond: dict) -> dict:
        if id(cond) not in self._restored:
            start, end = cond[TAG_KEY].percent_range
            self._restored[id(cond)] = {**cond, "timestep_start": self.sampling.percent_to_sigma(start),
                                        "timestep_end": self.sampling.percent_to_sigma(end)}
        return self._restored[id(cond)]

    def select(self, conds: list, timestep: torch.Tensor) -> list:
        step = None
        out = []
        for cond in conds:
            if cond is None or not any(TAG_KEY in c for c in cond):
                out.append(cond)
                continue
            if step is None:
                step = self.step(timestep)
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
        conds = run.select(conds, timestep)
    return executor(model, conds, x_in, timestep, model_options)


_WRAPPERS = ((WrappersMP.SAMPLER_SAMPLE, _sampler_sample), (WrappersMP.CALC_COND_BATCH, _calc_cond_batch))


def install_merge_wrapper(model_patcher) -> None:
    """Make ``model_patcher`` (already a clone) honour MergeStepScheduler conditionings exactly."""
    for kind, wrapper in _WRAPPERS:
        model_patcher.remove_wrappers_with_key(kind, WRAPPER_KEY)
        model_patcher.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper)


def has_merge_wrapper(model_patcher) -> bool:
    return all(model_patcher.get_wrappers(kind, WRAPPER_KEY) for kind, _ in _WRAPPERS)


class MergeStepScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ConsistentIDMergeStepScheduler",
            display_name="ConsistentID Merge Step Scheduler",
            category=CATEGORY,
            description="Combines the text-only and the facial positive into one conditioning that uses the "
                        "text-only prompt for steps 0 to merge_step and the facial prompt after, exactly per "
                        "sampler step as the official ConsistentID (50 steps, merge at 30), for every sampler "
                        "and scheduler. Needs the MODEL from ConsistentIDApply; any other model samples with "
                        "the text-only prompt alone.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL from ConsistentIDApply, the one the sampler uses; "
                                                "a model without ConsistentID ignores the facial prompt."),
                io.Conditioning.Input("text_only", tooltip="Positive for the early steps: the prompt without "
                                                           "the facial features (FacialEncoder's text_only)."),
                io.Conditioning.Input("facial", tooltip="Positive for the steps after merge_step: the prompt "
                                                        "with the facial features fused in."),
                io.Int.Input("merge_step", default=30, min=0, max=10000,
                             tooltip="Last step (0-based) that uses the text-only prompt; the official value is "
                                     "30 of 50. Counted over the whole schedule, also in KSamplerAdvanced."),
                io.Int.Input("steps", default=50, min=1, max=10000,
                             tooltip="The sampler's total steps; used to place KSamplerAdvanced's "
                                     "start_at_step in the schedule."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="The sampler's scheduler; used with steps to place a partial "
                                       "(KSamplerAdvanced) run in the full schedule."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive")],
        )

    @classmethod
    def execute(cls, model, text_only, facial, merge_step, steps, scheduler) -> io.NodeOutput:
        if not has_merge_wrapper(model):
            logging.warning("ConsistentID MergeStepScheduler: the MODEL was not patched by ConsistentIDApply, "
                            "so sampling uses the text-only prompt for every step. Connect the MODEL output of "
                            "ConsistentIDApply to this node and to the sampler.")
        return io.NodeOutput(merge_conditioning(text_only, facial, merge_step, steps, scheduler))


NODES = [MergeStepScheduler]
