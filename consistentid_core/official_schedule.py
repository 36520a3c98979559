"""The noise schedule of the official ConsistentID SD1.5 demo: diffusers' ``EulerDiscreteScheduler`` with the
SD1.5 scheduler config (scaled-linear betas, "linspace" timestep spacing).

It differs from a ComfyUI schedule in two ways that change the picture:

* the timesteps are spread evenly over ``0 .. T-1``, so they are fractional (946.42…) and reach the UNet
  unrounded, and each step's sigma is the training sigma interpolated *linearly* at that fractional timestep;
* the training sigmas come from betas and their cumulative product computed in float32, where ComfyUI
  computes them in float64: the two tables differ by up to ~1e-5 relative.

The functions below compute the table and both directions of the interpolation in that same way, so a sampler
can recover the official fractional timestep from the sigma it is at. (The spacing's ``steps_offset`` of 1
applies to "leading" spacing only; "linspace" ignores it.)
"""
import torch


def training_sigmas(beta_start: float, beta_end: float, num_train_timesteps: int) -> torch.Tensor:
    """The float32 sigma of each training timestep ``0 .. T-1``, as diffusers computes it for scaled-linear
    betas (``beta_start``/``beta_end`` are the model's, 0.00085 and 0.012 for SD1.5 and SDXL)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float32) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def linspace_timesteps(steps: int, num_train_timesteps: int) -> torch.Tensor:
    """The official timesteps of a ``steps``-step run, highest first: ``T-1 .. 0`` evenly spaced (float32)."""
    # Spaced in float64 and rounded once to float32, as numpy's linspace with a float32 dtype does.
    return torch.linspace(0, num_train_timesteps - 1, steps, dtype=torch.float64).flip(0).float()


def sigma_at(training: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """Sigma at a (fractional) timestep: the ``training`` sigmas interpolated linearly, in float64 as numpy's
    ``interp`` does, clamped to ``0 .. T-1`` (float32, on ``timestep``'s device)."""
    # On the CPU: float64 is not available on every accelerator (MPS), and these are a few numbers per step.
    table = training.detach().cpu().double()
    t = timestep.detach().cpu().double().clamp(0, len(table) - 1)
    low = t.floor().long().clamp(max=len(table) - 2)
    sigma = table[low] + (table[low + 1] - table[low]) * (t - low)
    return sigma.float().to(timestep.device)


def timestep_at(training: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The fractional timestep whose :func:`sigma_at` is ``sigma``: the inverse of the linear interpolation
    (the training sigmas increase with the timestep), clamped to ``0 .. T-1`` (float32)."""
    table = training.detach().cpu().double()
    s = sigma.detach().cpu().double()
    low = (torch.searchsorted(table, s) - 1).clamp(0, len(table) - 2)
    frac = ((s - table[low]) / (table[low + 1] - table[low])).clamp(0, 1)
    return (low + frac).float().to(sigma.device)


def official_sigmas(training: torch.Tensor, steps: int) -> torch.Tensor:
    """The ``steps + 1`` sigmas of the official run, ending in 0 (float32, CPU), as ComfyUI's SIGMAS."""
    timesteps = linspace_timesteps(steps, len(training))
    return torch.cat([sigma_at(training, timesteps), torch.zeros(1)])
