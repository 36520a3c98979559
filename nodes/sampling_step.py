"""Which sampler step each model evaluation belongs to, published to the pack's patches as plain numbers.

The merge step (docs/method.md §5.2) switches prompts after a given step, and ``start_at``/``end_at`` turn
the face-ID branch on and off by sigma; both must be decided per model evaluation, on the host's side,
without reading the sampler's frames or syncing with the GPU inside the UNet.

ComfyUI gives no step index to a model evaluation, and a sigma alone is ambiguous: heun's end-point
evaluation of step i is at the same sigma as step i+1's first one, heunpp2 evaluates two steps ahead
(docs/method.md §7.4). So when a sampler run starts (``SAMPLER_SAMPLE``), its sampler function is first run
*dry* on the run's sigmas with a stand-in model that returns its input: that costs a few tensor operations
per step and records the order of model evaluations and progress callbacks. Every k-diffusion sampler calls
the callback of step i right after the step's first evaluation, at sigma_i; so an evaluation belongs to the
step of the callback that follows it directly, else to the step of the last callback before it. The real run
then numbers its evaluations (``PREDICT_NOISE``) and looks their step up. A sampler that does not follow
that pattern (dpm_fast and dpm_adaptive choose their own steps; a custom sampler object has no sampler
function to dry-run) gets the step from the sigma instead, the last schedule sigma at or above it, which is
exact for samplers that evaluate each step once at its own sigma, and a warning says so.
"""
import logging
from dataclasses import dataclass

import torch

import comfy.samplers
from comfy.patcher_extension import WrappersMP

WRAPPER_KEY = "consistentid_step"
OPTION_KEY = "consistentid_step"  # in transformer_options: the StepInfo of the current model evaluation


@dataclass(frozen=True)
class StepInfo:
    step: int
    sigma: float


class _DryModel:
    """The sampler's model during the dry run: records each evaluation and predicts its input unchanged."""

    def __init__(self, real, events: list):
        self._real = real
        self._events = events

    def __getattr__(self, name):
        # Some samplers read the model sampling or patcher through the model they are given.
        return getattr(self._real, name)

    def __call__(self, x, sigma, **kwargs):
        self._events.append(("eval", float(sigma.max())))
        return x


def _step_of_sigma(sigmas: tuple[float, ...], sigma: float) -> int:
    return max(sum(s >= sigma * (1 - 1e-5) for s in sigmas[:-1]) - 1, 0)


def _dry_run_steps(sampler, guider, sigmas: torch.Tensor, extra_args: dict, noise: torch.Tensor):
    """Step of each model evaluation in order, from a dry run; ``None`` when the sampler cannot be placed."""
    function = getattr(sampler, "sampler_function", None)
    if function is None:
        return None
    events: list = []
    model = _DryModel(comfy.samplers.KSamplerX0Inpaint(guider, sigmas), events)
    callback = lambda state: events.append(("step", int(state["i"])))  # noqa: E731
    devices = [noise.device] if noise.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            function(model, noise.clone(), sigmas, extra_args={**extra_args, "denoise_mask": None},
                     callback=callback, disable=True, **sampler.extra_options)
    except Exception as err:  # a sampler that cannot run on a stand-in model is placed by sigma
        logging.debug("ConsistentID: dry run of the sampler failed (%s); steps are placed by sigma.", err)
        return None
    schedule = sigmas.float().cpu().tolist()
    steps, expected = [], 0
    for n, (kind, value) in enumerate(events):
        if kind == "eval":
            steps.append(max(expected - 1, 0))
            continue
        previous = events[n - 1] if n else ("step", None)
        if value != expected or previous[0] != "eval" or abs(previous[1] - schedule[value]) > 1e-5 * schedule[value]:
            return None
        steps[-1] = value
        expected += 1
    if expected != len(schedule) - 1:
        return None
    return steps, [value for kind, value in events if kind == "eval"]


class _Run:
    """One sampler run: its schedule, the dry run's steps, and the count of evaluations so far."""

    def __init__(self, sigmas: torch.Tensor, planned):
        self.sigmas = tuple(sigmas.float().cpu().tolist())
        self.planned = planned
        self.evaluations = 0
        self.warned = False

    def info(self, timestep: torch.Tensor) -> StepInfo:
        n = self.evaluations
        self.evaluations += 1
        if self.planned is not None and n < len(self.planned[0]):
            steps, planned_sigmas = self.planned
            sigma = planned_sigmas[n]
            return StepInfo(steps[n], sigma)
        sigma = float(timestep.max())
        if self.planned is not None and not self.warned:
            self.warned = True
            logging.warning("ConsistentID: this sampler evaluated the model more often than planned; the "
                            "remaining evaluations are placed in the schedule by their sigma.")
        return StepInfo(_step_of_sigma(self.sigmas, sigma), sigma)


_RUN_KEY = "consistentid_step_run"


def _sampler_sample(executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
    planned = _dry_run_steps(executor.class_obj, guider, sigmas, extra_args, noise)
    if planned is None:
        logging.warning("ConsistentID: the sampler does not evaluate the model in the k-diffusion step "
                        "pattern, so each evaluation is placed in the schedule by its sigma (exact only for "
                        "samplers that evaluate each step once, at its own sigma).")
    extra_args["model_options"][_RUN_KEY] = _Run(sigmas, planned)
    return executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)


def _predict_noise(executor, x, timestep, model_options, seed):
    run = model_options.get(_RUN_KEY)
    if run is None:
        return executor(x, timestep, model_options, seed)
    transformer_options = {**model_options.get("transformer_options", {}), OPTION_KEY: run.info(timestep)}
    return executor(x, timestep, {**model_options, "transformer_options": transformer_options}, seed)


_WRAPPERS = ((WrappersMP.SAMPLER_SAMPLE, _sampler_sample), (WrappersMP.PREDICT_NOISE, _predict_noise))


def install_step_tracking(model_patcher) -> None:
    """Make every model evaluation of ``model_patcher`` (already a clone) carry its :class:`StepInfo`."""
    for kind, wrapper in _WRAPPERS:
        model_patcher.remove_wrappers_with_key(kind, WRAPPER_KEY)
        model_patcher.add_wrapper_with_key(kind, WRAPPER_KEY, wrapper)
