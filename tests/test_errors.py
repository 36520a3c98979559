"""The one form of the pack's messages: ``[ConsistentID · <node>] <problem> Fix: <fix>``."""
from consistentid_core.errors import ConsistentIDError, WeightFileError, message


def test_an_error_names_the_node_it_is_first_attached_to():
    err = WeightFileError("Model file 'a.bin' was not found in /m/consistentid.", "Put it there.")
    assert str(err) == "[ConsistentID] Model file 'a.bin' was not found in /m/consistentid. Fix: Put it there."

    # The innermost node names it: the all-in-one's step, not a node the error passes through later.
    assert err.attach_node("ConsistentID (all in one) › Loader") is err
    err.attach_node("ConsistentID (all in one)")

    assert str(err) == ("[ConsistentID · ConsistentID (all in one) › Loader] Model file 'a.bin' was not found in "
                        "/m/consistentid. Fix: Put it there.")
    assert isinstance(err, ConsistentIDError)


def test_a_warning_reads_like_an_error():
    assert message("The pack 'antelopev2' recognises faces with glintr100.onnx.", "Select buffalo_l.",
                   "ConsistentID InsightFace Loader") == (
        "[ConsistentID · ConsistentID InsightFace Loader] The pack 'antelopev2' recognises faces with "
        "glintr100.onnx. Fix: Select buffalo_l.")
