"""The official SD1.5 demo's Euler schedule against golden G8 (diffusers ``EulerDiscreteScheduler``, linspace)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from consistentid_core.official_schedule import (linspace_timesteps, official_sigmas, sigma_at, timestep_at,
                                                 training_sigmas)

# Float32 timesteps near 999 are 6.1e-5 apart: the inverse may land a few of those off.
TIMESTEP_ATOL = 2e-4


@pytest.fixture(scope="module")
def g8(golden_dir):
    meta = json.loads((golden_dir / "g7_unet" / "g7_unet.json").read_text())["g8"]
    return meta, load_file(golden_dir / "g7_unet" / "g7_unet_io.safetensors")


@pytest.fixture(scope="module")
def training(g8):
    config = g8[0]["scheduler_config"]
    assert config["beta_schedule"] == "scaled_linear" and config["timestep_spacing"] == "linspace"
    return training_sigmas(config["beta_start"], config["beta_end"], config["num_train_timesteps"])


def test_sigmas_and_timesteps_are_the_official_ones_bit_for_bit(g8, training):
    meta, tensors = g8
    steps = meta["steps"]
    torch.testing.assert_close(linspace_timesteps(steps, len(training)), tensors["g8.timesteps"], rtol=0, atol=0)
    sigmas = official_sigmas(training, steps)
    assert sigmas.dtype == torch.float32 and sigmas.device.type == "cpu"
    torch.testing.assert_close(sigmas, tensors["g8.sigmas"], rtol=0, atol=0)
    # The demo's first latent is noise · σ_max: its init_noise_sigma is the top training sigma.
    assert float(training[-1]) == meta["init_noise_sigma"] == float(sigmas[0])


def test_each_official_sigma_maps_back_to_its_fractional_timestep(g8, training):
    _, tensors = g8
    timesteps = timestep_at(training, tensors["g8.sigmas"][:-1])
    torch.testing.assert_close(timesteps, tensors["g8.timesteps"], rtol=0, atol=TIMESTEP_ATOL)
    assert float(timesteps[1]) == pytest.approx(946.421, abs=1e-3)  # not rounded to 946 as the host does
    torch.testing.assert_close(sigma_at(training, timesteps), tensors["g8.sigmas"][:-1], rtol=2e-7, atol=0)


def test_interpolation_is_linear_in_sigma_between_training_timesteps(training):
    torch.testing.assert_close(sigma_at(training, torch.arange(1000.0)), training, rtol=0, atol=0)
    halfway = sigma_at(training, torch.tensor([0.5, 500.25]))
    expected = torch.stack([(training[0] + training[1]) / 2, training[500] + (training[501] - training[500]) / 4])
    torch.testing.assert_close(halfway, expected, rtol=1e-7, atol=0)
    torch.testing.assert_close(timestep_at(training, halfway), torch.tensor([0.5, 500.25]), rtol=0,
                               atol=TIMESTEP_ATOL)


def test_out_of_range_values_are_clamped_to_the_training_range(training):
    assert timestep_at(training, torch.tensor([100.0, 1e-3])).tolist() == [999.0, 0.0]
    torch.testing.assert_close(sigma_at(training, torch.tensor([1200.0, -3.0])), training[[999, 0]], rtol=0, atol=0)


def test_fifty_steps_span_the_whole_training_range_evenly(training):
    sigmas = official_sigmas(training, 50)
    assert len(sigmas) == 51 and float(sigmas[-1]) == 0.0
    assert float(sigmas[0]) == float(training[-1]) and float(sigmas[-2]) == float(training[0])
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    expected = torch.tensor([999 - i * 999 / 49 for i in range(50)])
    torch.testing.assert_close(timestep_at(training, sigmas[:-1]), expected, rtol=0, atol=TIMESTEP_ATOL)
