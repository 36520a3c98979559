// What keeps a ConsistentID merge step in line with its sampler. No ComfyUI imports, so Node's
// test runner can load it (tests/web/merge_sync.test.mjs).

// The merge node places its switch in the schedule of its own steps and scheduler; a sampler with
// others switches at that noise level instead of after merge_step (and the run logs a warning).
export const SAMPLERS = new Set(["KSampler", "KSamplerAdvanced"]);
// ConsistentIDMergeStepScheduler: the merge node of workflows saved before ConsistentIDMergeStep.
export const SCHEDULE_NODES = new Set([
  "ConsistentIDMergeStep", "ConsistentIDMergeStepScheduler", "ConsistentIDSimple",
]);
export const SYNCED = ["steps", "scheduler"];
// Inputs followed upstream from a sampler's positive: inpainting and ControlNet nodes sit between.
export const CONDITIONING_INPUTS = ["positive", "conditioning"];
const MAX_HOPS = 8;

/**
 * The ConsistentID merge node whose positive reaches `sampler`, directly or through conditioning
 * nodes (InpaintModelConditioning, ControlNetApplyAdvanced, ...), or `null`.
 * `upstream(node, inputName)` gives the node linked to that input, or `null`.
 */
export function scheduleSource(sampler, upstream) {
  let node = sampler;
  for (let hop = 0; node && hop < MAX_HOPS; hop++) {
    const from = node;
    node = CONDITIONING_INPUTS.map((name) => upstream(from, name)).find(Boolean) ?? null;
    if (node && SCHEDULE_NODES.has(node.type)) return node;
  }
  return null;
}

/**
 * The synced settings out of step: `{name: [values]}`, the one value the samplers share where the node differs, or
 * every value where the samplers fed by the node disagree among themselves (the node can match one run only).
 */
export function scheduleMismatch(samplersValues, nodeValues) {
  const out = {};
  for (const name of SYNCED) {
    if (!(name in nodeValues)) continue;
    const values = [...new Set(samplersValues.map((v) => v[name]).filter((v) => v !== undefined))];
    if (values.length > 1 || (values.length === 1 && values[0] !== nodeValues[name])) out[name] = values;
  }
  return out;
}

/**
 * The values to copy onto the node that feeds a sampler's positive input: `{name: value}`, empty
 * unless the sampler is a stock KSampler and the node is a ConsistentID merge node.
 */
export function scheduleUpdates(samplerType, samplerValues, nodeType, nodeValues) {
  if (!SAMPLERS.has(samplerType) || !SCHEDULE_NODES.has(nodeType)) return {};
  return Object.fromEntries(Object.entries(scheduleMismatch([samplerValues], nodeValues)).map(([k, [v]]) => [k, v]));
}

const FLAG = "⚠ ";

/** Whether a widget label is a mismatch flag (so never taken for the user's own label). */
export const isFlag = (label) => typeof label === "string" && label.startsWith(FLAG);

/**
 * The label of a synced widget: the user's own label (`base`, or none) while in step, else a flag that keeps it
 * and names the sampler's value, or the samplers' values where they disagree.
 */
export function mismatchLabel(base, name, values) {
  if (!values?.length) return base;
  const shown = base || name;
  return values.length === 1 ? `${FLAG}${shown} ≠ sampler (${values[0]})`
    : `${FLAG}${shown}: samplers differ (${values.join(" / ")})`;
}
