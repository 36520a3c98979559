"""The benchmark's operator counts on the full-size SD1.5 UNet: the face-ID branch's per-step price, and the
LoRA's where the host patches weights in the forward."""
from benchmarks.op_count import operator_counts
from test_unet_patch import _tokens, _weights

SD15_PATCHED_WEIGHTS = 16 * 2 * 4  # 16 transformers, self- and cross-attention, to_q/k/v/out each


def test_operator_counts_of_the_face_id_branch(host, pack, base):
    counts = operator_counts(base, pack.unet_patch.apply_to_model, _weights(pack), *_tokens(), cross_attentions=16)
    plain, ours, off = counts["plain"], counts["consistentid"], counts["id_weight_0"]
    # The counter is honest: the merged LoRA with the branch off dispatches exactly what plain SD1.5 does.
    assert (off["total"], off["kernels"]) == (plain["total"], plain["kernels"]) and plain["kernels"] > 500
    # The branch: attention over the 4 ID tokens and one add per cross-attention, keys/values precomputed.
    assert 0 < counts["extra_kernels_per_cross_attention"] <= 4
    assert ours["kernels"] > plain["kernels"] and ours["kernels_ratio"] <= 1.1

    # Patched in the forward (low-VRAM loading; Dynamic VRAM for weights it cannot keep in VRAM), every forward
    # recomputes each LoRA weight. On a CPU the partial load itself dispatches nothing more, so the difference
    # is the LoRA: at least its product and its add, for each of the adapter's weights.
    in_forward = counts["patched_in_forward"]
    assert in_forward["plain"]["kernels"] == plain["kernels"]
    assert in_forward["patched_weights"] == SD15_PATCHED_WEIGHTS
    assert in_forward["lora_kernels"] == in_forward["id_weight_0"]["kernels"] - plain["kernels"]
    assert in_forward["lora_kernels_per_weight"] >= 2
