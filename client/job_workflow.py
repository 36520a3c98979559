"""One job's prompt: the pack's basic workflow (or an API export shaped like it) with the job's identity and
settings set and a ConsistentID FaceSim node added."""
import json

from comfy_server import ClientError

# The nodes whose inputs the settings set; each must be in the workflow exactly once.
REQUIRED = ("CheckpointLoaderSimple", "ConsistentIDApply", "ConsistentIDFaceEncode", "ConsistentIDFacialEncoder",
            "EmptyLatentImage", "KSampler", "SaveImage")
# The merge node: ConsistentID Merge Step, or in exports made before it its predecessor (same settings).
MERGE = ("ConsistentIDMergeStep", "ConsistentIDMergeStepScheduler")
# Setting -> (node, input) it sets; a setting left out (or None) keeps the workflow's value.
SETTINGS = {"seed": ("KSampler", "seed"), "steps": ("KSampler", "steps"), "cfg": ("KSampler", "cfg"),
            "prompt": ("ConsistentIDFacialEncoder", "prompt"),
            "negative": ("ConsistentIDFacialEncoder", "negative_prompt"),
            "width": ("EmptyLatentImage", "width"), "height": ("EmptyLatentImage", "height"),
            "weight": ("ConsistentIDApply", "weight"), "checkpoint": ("CheckpointLoaderSimple", "ckpt_name"),
            "merge_step": ("merge", "merge_step")}


def _only(prompt: dict, *class_types: str) -> str:
    ids = [node_id for node_id, node in prompt.items() if node["class_type"] in class_types]
    if len(ids) != 1:
        raise ClientError(f"The workflow has {len(ids)} {' or '.join(class_types)} nodes; the client needs exactly "
                          "one. Use the pack's basic example (the default) or an API export shaped like it.")
    return ids[0]


def _needed(prompt: dict, outputs: list[str]) -> dict:
    """``prompt`` cut to the nodes ``outputs`` depend on (so an identity file leaves the photo's nodes out)."""
    keep, todo = set(), list(outputs)
    while todo:
        node_id = todo.pop()
        if node_id not in keep:
            keep.add(node_id)
            todo += [value[0] for value in prompt[node_id]["inputs"].values() if isinstance(value, list)]
    return {node_id: node for node_id, node in prompt.items() if node_id in keep}


def build_prompt(workflow: dict, identity: dict, settings: dict) -> tuple[dict, str, str | None]:
    """``(prompt, SaveImage id, FaceSim id or None)``.

    ``identity`` is ``{"photo": name}`` (a photo in the server's input folder, encoded by the workflow) or
    ``{"file": name}`` (an identity file Load Identity reads; with ``"photo"`` beside it, FaceSim scores against
    that photo, else there is no score).
    """
    prompt = json.loads(json.dumps(workflow))
    ids = {class_type: _only(prompt, class_type) for class_type in REQUIRED}
    ids["merge"] = _only(prompt, *MERGE)
    inputs = {class_type: prompt[node_id]["inputs"] for class_type, node_id in ids.items()}
    face = inputs["ConsistentIDFaceEncode"]
    merge = inputs["merge"]
    if settings.get("steps") is not None and settings.get("merge_step") is None:
        # The official 30 of 50, scaled; the facial prompt needs a step after the merge step.
        settings = {**settings, "merge_step": min(round(merge["merge_step"] * settings["steps"] / merge["steps"]),
                                                  settings["steps"] - 2)}
    for key, (class_type, name) in SETTINGS.items():
        if settings.get(key) is not None:
            inputs[class_type][name] = settings[key]
    # The Merge Step must plan the same steps as the sampler.
    merge["steps"] = inputs["KSampler"]["steps"]
    inputs["EmptyLatentImage"]["batch_size"] = 1
    next_id = max(int(node_id) for node_id in prompt if node_id.isdigit()) + 1
    photo = face["image"]
    if identity.get("photo") is not None:
        prompt[photo[0]]["inputs"]["image"] = identity["photo"]
    if "file" in identity:
        load = str(next_id)
        next_id += 1
        prompt[load] = {"class_type": "ConsistentIDLoadIdentity", "_meta": {"title": "Load Identity"},
                        "inputs": {"consistentid": face["consistentid"], "identity_name": identity["file"]}}
        for node in prompt.values():
            for name, value in node["inputs"].items():
                if value == [ids["ConsistentIDFaceEncode"], 0]:
                    node["inputs"][name] = [load, 0]
    outputs, facesim = [ids["SaveImage"]], None
    if identity.get("photo") is not None:
        facesim = str(next_id)
        prompt[facesim] = {"class_type": "ConsistentIDFaceSim", "_meta": {"title": "FaceSim"},
                           "inputs": {"insightface": face["insightface"], "reference": photo,
                                      "images": inputs["SaveImage"]["images"]}}
        outputs.append(facesim)
    return _needed(prompt, outputs), ids["SaveImage"], facesim
