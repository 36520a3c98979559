"""The pack's node texts for the ComfyUI frontend, written from the nodes' ``/object_info``:

- ``locales/en/nodeDefs.json``: display name, description, input names and tooltips, output names and tooltips
  of every node, keyed as the frontend's own ``nodeDefs.json`` (the host serves every pack's ``locales/<lang>/``
  at ``/i18n``; a translation is a copy of this file under ``locales/<lang>/``);
- ``web/js/docs/<node id>.md``: the node's help page (what it does, inputs, outputs, an example), which the
  frontend's node help panel fetches from ``/extensions/<pack folder>/docs/<node id>/<locale>.md``, then
  ``/extensions/<pack folder>/docs/<node id>.md``; ``/extensions/<pack folder>/`` serves the pack's
  ``WEB_DIRECTORY`` (``web/js``).

The nodes are the same on every host, so the files are too; ``tests/host/test_node_pages.py`` checks on every
host that they are those of its ``/object_info``. After changing a node's texts or inputs, regenerate them:

    .venv/bin/python tests/host/node_pages.py   (the host that ``tests/dev_env.py`` finds)
"""
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NODE_DEFS = REPO / "locales" / "en" / "nodeDefs.json"
HELP_DIR = REPO / "web" / "js" / "docs"
EXAMPLES_DIR = REPO / "example_workflows"

# An example for the nodes that no example workflow holds.
USES = {
    "ConsistentIDSaveIdentity": "Connect Face Encode's `identity` and set `filename_prefix` to `alice`: the run writes "
                                "`models/consistentid_identities/alice_00001_.safetensors`, which Load Identity lists "
                                "after pressing `r`, so later workflows skip the photos and the face analysis.",
    "ConsistentIDLoadIdentity": "In the basic example, replace Face Encode with Load Identity (the same adapter "
                                "Loader connected, `identity` set to a file Save Identity wrote) and connect its "
                                "`identity` to Apply and the Facial Encoder.",
    "ConsistentIDBlendIdentities": "Encode two people with Face Encode (`combine` = `average`), connect them as "
                                   "`identity_a` and `identity_b` with `weight` 0.5, and give the result to Apply "
                                   "and the Facial Encoder: a face between the two.",
    "ConsistentIDMergeStepScheduler": "Kept so that workflows made with it still open and give the same image; "
                                      "new workflows use ConsistentID Merge Step, as every example does.",
    "ConsistentIDOfficialSampling": "In the basic example, replace the KSampler with SamplerCustom: connect "
                                    "this node after Apply, its `model` and `sigmas` to SamplerCustom, and "
                                    "KSamplerSelect `euler` as its sampler (Merge Step: its steps, scheduler "
                                    "`normal`): the run then follows the official demo's trajectory step by step.",
    "ConsistentIDFaceSim": "Connect the sampler's decoded IMAGE as `images`, the reference photo as `reference` "
                           "and the InsightFace loader's pack: it shows one ArcFace cosine similarity per image "
                           "(the README's FaceSim figures) and outputs them as a list.",
    "ConsistentIDDinoLoader": "Load `dino_deitsmall16_pretrain.pth` and connect it to ConsistentID FGIS.",
    "ConsistentIDFGIS": "Connect the generated IMAGE and the reference photo, both parsed by Face Parse (their "
                        "`face_regions`), and the DINO loader's model: it scores each facial region's likeness, as "
                        "the paper's FGIS metric.",
}


def node_defs(pack_nodes: dict) -> dict:
    """The frontend's ``nodeDefs`` entries of the pack's nodes (``/object_info`` entries by node id)."""
    defs = {}
    for node_id, info in sorted(pack_nodes.items()):
        inputs = {name: {"name": name, "tooltip": spec[1]["tooltip"]}
                  for name, spec in _inputs(info)}
        outputs = {str(slot): {"name": name, **({"tooltip": tooltip} if tooltip else {})}
                   for slot, (name, tooltip) in enumerate(zip(info["output_name"], info["output_tooltips"]))}
        defs[node_id] = {"display_name": info["display_name"], "description": info["description"],
                         "inputs": inputs, "outputs": outputs}
    return defs


def _inputs(info: dict) -> list[tuple[str, list]]:
    """(name, spec) of the visible inputs, in the node's order; optional ones after the required."""
    return [(name, info["input"][section][name]) for section in ("required", "optional")
            for name in info.get("input_order", {}).get(section, [])]


def _kind(spec: list) -> str:
    options = spec[1]
    kind = "COMBO" if isinstance(spec[0], list) else spec[0]
    details = []
    if "default" in options and not (kind == "STRING" and options["default"] == ""):
        details.append(f"default {options['default']}")
    if "min" in options and "max" in options:
        details.append(f"{options['min']} to {options['max']}")
    return kind + (f" ({', '.join(details)})" if details else "")


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def examples_using() -> dict[str, list[str]]:
    """Node id -> the example workflows (file stems) that hold it."""
    using: dict[str, list[str]] = {}
    for path in sorted(EXAMPLES_DIR.glob("*.json")):
        for node in json.loads(path.read_text())["nodes"]:
            names = using.setdefault(node["type"], [])
            if path.stem not in names:
                names.append(path.stem)
    return using


def help_page(info: dict, examples: list[str]) -> str:
    node_id = info["name"]
    lines = [f"# {info['display_name']}", ""]
    if info.get("deprecated"):
        lines += ["**Deprecated:** kept so that old workflows open; new workflows do not need it.", ""]
    lines += [info["description"], "", "## Inputs", ""]
    optional = set(info["input"].get("optional", {}))
    lines += ["| input | type | what it takes |", "|---|---|---|"]
    lines += [f"| `{name}`{' (optional)' if name in optional else ''} | {_cell(_kind(spec))} | "
              f"{_cell(spec[1]['tooltip'])} |" for name, spec in _inputs(info)]
    lines += ["", "## Outputs", ""]
    if info["output_name"]:
        lines += ["| output | type | what it gives |", "|---|---|---|"]
        lines += [f"| `{name}` | {kind} | {_cell(tooltip)} |"
                  for name, kind, tooltip in zip(info["output_name"], info["output"], info["output_tooltips"])]
    else:
        lines += ["None: it writes a file."]
    lines += ["", "## Example", ""]
    if examples:
        named = ", ".join(f"`{stem}`" for stem in examples)
        lines += [f"The example workflows {named} use it: open them from ComfyUI's workflow templates, under "
                  f"ConsistentID (the files are in the pack's `example_workflows/`)."]
    else:
        lines += [USES[node_id]]
    return "\n".join(lines) + "\n"


def expected_files(pack_nodes: dict) -> dict[Path, str]:
    """Every file this module writes and its text."""
    using = examples_using()
    files = {NODE_DEFS: json.dumps(node_defs(pack_nodes), indent=2, ensure_ascii=False) + "\n"}
    for node_id, info in pack_nodes.items():
        files[HELP_DIR / f"{node_id}.md"] = help_page(info, using.get(node_id, []))
    return files


def write_files(pack_nodes: dict) -> list[Path]:
    for stale in HELP_DIR.glob("*.md"):
        stale.unlink()
    written = []
    for path, text in expected_files(pack_nodes).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from comfy_host import scratch_server

    with scratch_server() as server:
        for path in write_files(server.pack_nodes()):
            print(path.relative_to(REPO))
