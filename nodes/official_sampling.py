"""ConsistentID Official Sampling: the official SD1.5 demo's denoising trajectory inside ComfyUI, on request.

The official demo samples with diffusers' Euler scheduler on an evenly spaced ("linspace") timestep grid. A
stock ComfyUI run with euler/normal lands on nearly the same sigmas but drifts from the demo's picture: it feeds
the UNet each timestep rounded to an integer (the demo passes 946.42…, 893.84…), and it starts from noise
scaled by √(1 + σ_max²) where the demo uses σ_max. This node swaps the MODEL's model sampling for one that keeps
the demo's fractional timesteps and starting noise, and outputs the demo's sigmas for SamplerCustom.
"""
import functools
import logging

import torch

import comfy.model_sampling
from comfy.patcher_extension import WrappersMP
from comfy_api.latest import io

from ..consistentid_core.errors import ConsistentIDError, message
from ..consistentid_core.official_schedule import official_sigmas, sigma_at, timestep_at, training_sigmas
from . import host
from .common import PackNode, node_label, node_schema

WRAPPER_KEY = "consistentid_official_check"


class OfficialSchedule:
    """Put in front of the MODEL's discrete model-sampling class: the demo's training sigmas (float32), its
    linear sigma/timestep interpolation both ways, and its starting noise.

    Both directions are overridden so that everything the host derives from the model sampling (its schedulers,
    start/end percentages) stays consistent with the timesteps the UNet receives.
    """

    def __init__(self, model_config=None, zsnr=None):
        super().__init__(model_config, zsnr)
        self.set_sigmas(training_sigmas(self.linear_start, self.linear_end, self.num_timesteps))

    def timestep(self, sigma):
        return timestep_at(self.sigmas, sigma)

    def sigma(self, timestep):
        return sigma_at(self.sigmas, timestep)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        # With "linspace" spacing the demo's first latent is noise · σ_max, the scaling the host uses for a
        # run that does not start at σ_max.
        return super().noise_scaling(sigma, noise, latent_image, max_denoise=False)


def _schedule_problem(model) -> ConsistentIDError | None:
    """Why the MODEL's noise schedule is not the scaled-linear discrete one the official schedule is built on."""
    sampling = model.get_model_object("model_sampling")
    # ComfyUI's "linear" beta schedule is diffusers' "scaled_linear" (evenly spaced square roots of the betas).
    beta_schedule = host.beta_schedule(model)
    discrete = comfy.model_sampling.ModelSamplingDiscrete
    plain = isinstance(sampling, OfficialSchedule) or (
        isinstance(sampling, discrete) and type(sampling).timestep is discrete.timestep and not sampling.zsnr)
    if plain and beta_schedule == "linear":
        return None
    return ConsistentIDError(
        f"The MODEL samples with {type(sampling).__name__} (beta schedule {beta_schedule!r}, zsnr "
        f"{getattr(sampling, 'zsnr', False)}), not the plain discrete scaled-linear schedule of SD1.5 and SDXL "
        f"that the official schedule is built on.",
        "Connect an SD1.5 (or SDXL) MODEL without a model-sampling patch (ModelSamplingDiscrete with zsnr, LCM, "
        "EDM, …) in front of this node, or sample with KSampler's own schedulers.")


def with_official_sampling(model):
    """A clone of ``model`` (a ModelPatcher) that samples with the official schedule's model sampling."""
    problem = _schedule_problem(model)
    if problem is not None:
        raise problem
    patched = model.clone()
    current = patched.get_model_object("model_sampling")
    if not isinstance(current, OfficialSchedule):
        # The MODEL's own class stays behind the override: it keeps the prediction type (eps or v).
        official = type("ConsistentIDOfficialSampling", (OfficialSchedule, type(current)), {})
        patched.add_object_patch("model_sampling", official(model.model.model_config))
    return patched


class ConsistentIDOfficialSampling(PackNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="ConsistentIDOfficialSampling",
            display_name="ConsistentID Official Sampling",
            description="Samples along the official ConsistentID demo's trajectory (diffusers Euler, evenly "
                        "spaced timesteps). Its MODEL feeds the UNet the demo's fractional timesteps and starts "
                        "from noise scaled as the demo does; its SIGMAS are the demo's schedule. Use both with "
                        "SamplerCustom (or CFGGuider + SamplerCustomAdvanced) and the euler sampler. Not needed "
                        "for good pictures: KSampler's own schedulers remain the default.",
            inputs=[
                io.Model.Input("model", tooltip="The MODEL to sample with, e.g. from ConsistentID Apply; it is "
                                                "cloned, never changed."),
                io.Int.Input("steps", default=50, min=1, max=10000,
                             tooltip="Sampling steps; the official demo uses 50 (with merge_step 30). Set "
                                     "Merge Step's steps to the same value and its scheduler to 'normal'."),
            ],
            outputs=[io.Model.Output(display_name="model", tooltip="For SamplerCustom's model."),
                     io.Sigmas.Output(display_name="sigmas", tooltip="The official schedule, for SamplerCustom's "
                                                                 "sigmas.")],
        )

    @classmethod
    def execute(cls, model, steps) -> io.NodeOutput:
        patched = with_official_sampling(model)
        sigmas = official_sigmas(patched.get_model_object("model_sampling").sigmas, steps)
        node_id = cls.hidden.unique_id if cls.hidden is not None else None
        patched.remove_wrappers_with_key(WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY)
        patched.add_wrapper_with_key(WrappersMP.SAMPLER_SAMPLE, WRAPPER_KEY,
                                     functools.partial(_check_run, sigmas, node_label(cls), node_id))
        return io.NodeOutput(patched, sigmas)


def run_problem(official: torch.Tensor, sampler: str, run: torch.Tensor, node: str) -> str | None:
    """Why a run with ``sampler`` over the sigmas ``run`` is not the official trajectory of ``official``, as a
    warning naming the node; ``None`` when it is."""
    problems = []
    if sampler != "euler":
        problems.append(f"it samples with {sampler}, not euler (the demo's diffusers Euler)")
    if run.shape != official.shape or not torch.allclose(run.float().cpu(), official.float().cpu(), rtol=1e-5):
        problems.append(f"its {len(run) - 1} steps are not this node's {len(official) - 1}-step official sigmas")
    if not problems:
        return None
    return message(f"This run does not follow the official trajectory: {'; '.join(problems)}. It still samples, "
                   f"with the demo's timesteps, but not the demo's picture.",
                   "Sample with SamplerCustom: sampler euler (KSamplerSelect), sigmas from this node.", node)


def _check_run(official, node, node_id, executor, guider, sigmas, *args, **kwargs):
    problem = run_problem(official, host.run_sampler_name(executor), sigmas, node)
    if problem is not None:
        logging.warning(problem)
        host.show_on_node(node_id, problem)
    return executor(guider, sigmas, *args, **kwargs)


NODES = [ConsistentIDOfficialSampling]
