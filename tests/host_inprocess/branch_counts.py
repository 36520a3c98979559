"""Counting the attention branches of ConsistentID and of a neighbour pack stacked with it, per attention key."""
import collections


def count_branches(monkeypatch, pack, neighbour, function_name: str, name: str, key) -> dict:
    """``{"consistentid": Counter, name: Counter}`` of calls per ``key(extra_options)``, filled while the test
    runs: ConsistentID's FaceIDAttention, and ``neighbour.function_name``, the branch function a pack such as
    IPAdapter_plus or InstantID registers (it takes the one it finds in its own module when it patches a model)."""
    calls = {"consistentid": collections.Counter(), name: collections.Counter()}
    face_id_call = pack.unet_patch.FaceIDAttention.__call__
    branch_call = getattr(neighbour, function_name)

    def face_id(self, q, k, v, extra_options):
        calls["consistentid"][key(extra_options)] += 1
        return face_id_call(self, q, k, v, extra_options)

    def branch(out, q, k, v, extra_options, **kwargs):
        calls[name][key(extra_options)] += 1
        return branch_call(out, q, k, v, extra_options, **kwargs)

    monkeypatch.setattr(pack.unet_patch.FaceIDAttention, "__call__", face_id)
    monkeypatch.setattr(neighbour, function_name, branch)
    return calls
