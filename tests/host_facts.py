"""What the host tests need of ComfyUI beyond its public behaviour, in one place, for every host they run on
(0.3.64, the floor, and 0.28.0, the newest snapshot): each fact says which host does what. Tests that must touch
an internal go through here, so a new host changes this module, not the tests."""

# The node cache the test server runs: the classic one, whose outputs are those of the previous prompt's nodes
# (what a prompt reuses is then fixed by the prompts before it, not by the machine). 0.3.64: classic is the
# default and the flag only names it. 0.28.0: the default is the RAM-pressure cache, which also keeps outputs of
# older prompts and drops them when free RAM falls under a threshold, so on a busy machine what runs again varies.
CLASSIC_CACHE_ARGS = ["--cache-classic"]


def node_class_for(node_class, hidden: dict):
    """The class the host's executor calls ``execute`` on for one node (a clone of ``node_class`` with its hidden
    inputs set, ``io.Hidden`` → value), as ``execution.py`` makes it."""
    from comfy_api.latest import io

    # 0.3.64: PREPARE_CLASS_CLONE takes the hidden inputs themselves. 0.28.0: it takes V3Data, the hidden inputs
    # under "hidden_inputs" beside the paths of dynamic inputs.
    if hasattr(io, "V3Data"):
        return node_class.PREPARE_CLASS_CLONE({"hidden_inputs": hidden})
    return node_class.PREPARE_CLASS_CLONE(hidden)
