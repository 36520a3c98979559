"""ConsistentID stacked with the real ComfyUI_IPAdapter_plus under torch.compile, in both orders (see test_compile.py
for the accounting and test_with_ipadapter.py for how IPAdapter_plus is loaded). IPAdapter_plus alone is the
baseline: its ``Attn2Replace`` reads the sigma with ``.item()``, a graph break in each block it patches."""
from test_compile import _accounting, _assert_like_plain, dynamo  # noqa: F401 (dynamo: the module's fixture)
from test_unet_patch import _tokens, _weights
from test_with_ipadapter import _ipadapter_again, ipadapter_inputs, ipadapter_patched, ipadapter_plus  # noqa: F401


def test_ipadapter_plus_stacked_either_way_breaks_no_more_than_ipadapter_alone(host, pack, base, ipadapter_plus,  # noqa: F811
                                                                              ipadapter_patched):  # noqa: F811
    apply = pack.unet_patch.apply_to_model
    alone = _accounting(host, "IPAdapter_plus alone", _ipadapter_again(ipadapter_plus, ipadapter_patched, base))
    assert alone["breaks"] > 0 and alone["recompiles_over_steps"] == 0, alone["recompile_reasons"]
    theirs = _ipadapter_again(ipadapter_plus, ipadapter_patched, base)

    def ours_then_theirs(seed=1, weight=1.0):
        return _ipadapter_again(ipadapter_plus, ipadapter_patched, apply(base, _weights(pack), *_tokens(seed=seed),
                                                                         weight=weight))

    stacked = {"ConsistentID, then IPAdapter_plus": (ours_then_theirs(), ours_then_theirs(7, 0.4)),
               "IPAdapter_plus, then ConsistentID": (apply(theirs, _weights(pack), *_tokens()),
                                                     apply(theirs, _weights(pack), *_tokens(seed=7), weight=0.4))}
    for label, (model, changed) in stacked.items():
        figures = _accounting(host, label, model, [("identity, weight", changed, 1.0)])
        # Ours first, IPAdapter_plus's branch runs inside ours, whose sigma test is a tensor op: no break at all.
        expected = (1, 0) if label.startswith("ConsistentID") else (alone["graphs"], alone["breaks"])
        _assert_like_plain(figures, {"graphs": expected[0], "breaks": expected[1]})
