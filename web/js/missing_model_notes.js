// What a workflow's missing pack model files are, and what to tell the user. No ComfyUI imports, so Node's test
// runner can load it (tests/web/missing_model_notes.test.mjs).

/**
 * One line per selected model that is not in its combo's list: `{node, file, folder, download}`.
 * `nodes`: `[{title, widgets: [{name, value, options: [..]}]}]`; `specs`: `{inputName: {folder, release, download}}`
 * per node, from /object_info (`consistentid_models`, see nodes/paths.py).
 */
export function missingModels(nodes, specsOf) {
  const out = [];
  for (const node of nodes) {
    const specs = specsOf(node);
    if (!specs) continue;
    for (const w of node.widgets ?? []) {
      const spec = specs[w.name];
      if (spec && typeof w.value === "string" && w.value && !(w.options ?? []).includes(w.value)) {
        out.push({ node: node.title, file: w.value, folder: spec.folder,
                   download: spec.release.includes(w.value) ? spec.download : undefined });
      }
    }
  }
  return out;
}

/** The message for the missing files: where each goes and, for a release file, where to get it. */
export function missingModelsMessage(missing) {
  return missing.map(({ node, file, folder, download }) =>
    `${node}: ${file} is not in models/${folder}/. ${download ? `Download it from ${download} and put it there`
      : `Put it there or select another file`}, then press R to refresh.`).join("\n");
}
