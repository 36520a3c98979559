// Tells a user who opens a workflow without the pack's model files which are missing, where they go and where to
// get them, before anything is queued: the frontends' own missing-model checks know only the core folders and
// download only some file types.
import { app } from "../../scripts/app.js";
import { missingModels, missingModelsMessage } from "./missing_model_notes.js";

const SPEC_KEY = "consistentid_models";
const specsByType = new Map(); // node type -> {inputName: {folder, release, download}}

function modelSpecs(nodeData) {
  const inputs = { ...nodeData.input?.required, ...nodeData.input?.optional };
  const specs = Object.fromEntries(Object.entries(inputs)
    .filter(([, spec]) => spec?.[1]?.[SPEC_KEY]).map(([name, spec]) => [name, spec[1][SPEC_KEY]]));
  return Object.keys(specs).length ? specs : null;
}

app.registerExtension({
  name: "ConsistentID.MissingModels",
  beforeRegisterNodeDef(nodeType, nodeData) {
    const specs = modelSpecs(nodeData);
    if (specs) specsByType.set(nodeData.name, specs);
  },
  afterConfigureGraph() {
    const nodes = (app.graph?.nodes ?? []).map((n) => ({
      type: n.type, title: n.title,
      // Newer frontends may give a combo's values as a function.
      widgets: (n.widgets ?? []).map((w) => ({
        name: w.name, value: w.value,
        options: typeof w.options?.values === "function" ? w.options.values() : w.options?.values,
      })),
    }));
    const missing = missingModels(nodes, (n) => specsByType.get(n.type));
    if (!missing.length) return;
    app.extensionManager.toast.add({
      severity: "warn", summary: "ConsistentID: model files missing", detail: missingModelsMessage(missing),
    });
  },
});
