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

/** The synced settings whose values differ: `{name: samplerValue}`. */
export function scheduleMismatch(samplerValues, nodeValues) {
  const out = {};
  for (const name of SYNCED) {
    const value = samplerValues[name];
    if (value !== undefined && name in nodeValues && nodeValues[name] !== value) out[name] = value;
  }
  return out;
}

/**
 * The values to copy onto the node that feeds a sampler's positive input: `{name: value}`, empty
 * unless the sampler is a stock KSampler and the node is a ConsistentID merge node.
 */
export function scheduleUpdates(samplerType, samplerValues, nodeType, nodeValues) {
  if (!SAMPLERS.has(samplerType) || !SCHEDULE_NODES.has(nodeType)) return {};
  return scheduleMismatch(samplerValues, nodeValues);
}

/** Widget label that flags a setting out of step with the sampler, or `undefined` for none. */
export function mismatchLabel(name, samplerValue) {
  return samplerValue === undefined ? undefined : `${name} ≠ sampler (${samplerValue})`;
}
