"""Fixtures of the in-process host tests: ComfyUI imported into this Python (the host venv's, see
``tests/dev_env.py``) and the pack's modules imported through its package, as the host would."""
import importlib
import sys
import types
from pathlib import Path

import pytest
from dev_env import HostNotFound, comfyui_path

REPO = Path(__file__).resolve().parents[2]
PACK = "consistentid_pack_under_test"


@pytest.fixture(scope="session")
def host():
    try:
        path = str(comfyui_path())
    except HostNotFound as err:
        pytest.fail(str(err))
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        from comfy.cli_args import args

        args.cpu = True
        import comfy.model_management
        import comfy.sample
        import comfy.sd
    except ImportError as err:
        pytest.fail(f"this Python cannot import the ComfyUI at {path} ({err}); run the in-process tests with the "
                    f"host's Python (`python3 tests/dev_env.py python`)")
    return types.SimpleNamespace(path=path, mm=comfy.model_management, sample=comfy.sample, sd=comfy.sd)


@pytest.fixture(scope="session")
def pack(host):
    """The pack's modules imported through its package without running its ``__init__`` files (they
    register every node of the pack)."""
    for name, folder in ((PACK, REPO), (f"{PACK}.nodes", REPO / "nodes")):
        if name not in sys.modules:
            module = types.ModuleType(name)
            module.__path__ = [str(folder)]
            sys.modules[name] = module
    load = lambda name: importlib.import_module(f"{PACK}.{name}")  # noqa: E731
    return types.SimpleNamespace(unet_patch=load("nodes.unet_patch"), merge_step=load("nodes.merge_step"),
                                 checkpoint=load("consistentid_core.checkpoint"),
                                 errors=load("consistentid_core.errors"), layout=load("consistentid_core.unet_layout"),
                                 attention=load("consistentid_core.attention"), load=load)


@pytest.fixture(scope="module")
def base(host):
    """The caller's MODEL: a full-size random SD1.5 UNet as ModelPatcher, one per test module and unloaded
    after it, so models of earlier modules do not add up in CI's memory budget."""
    from safetensors import safe_open
    from weightgen.host_models import cached_host_models

    path = cached_host_models(None, Path(host.path))["sd15_checkpoint"]
    with safe_open(path, "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.diffusion_model.")}
    model = host.sd.load_diffusion_model_state_dict(sd)
    assert type(model.model.model_config).__name__ == "SD15"
    yield model
    host.mm.unload_all_models()
