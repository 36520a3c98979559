import assert from "node:assert/strict";
import test from "node:test";

import {
  isFlag, mismatchLabel, scheduleMismatch, scheduleSource, scheduleUpdates,
} from "../../web/js/merge_sync.js";

const sampler = { seed: 0, steps: 20, cfg: 5, sampler_name: "euler", scheduler: "karras", denoise: 1 };
const merge = { merge_step: 30, steps: 50, scheduler: "normal" };

test("a KSampler's steps and scheduler are copied to the merge node it reads", () => {
  assert.deepEqual(scheduleUpdates("KSampler", sampler, "ConsistentIDMergeStep", merge),
                   { steps: 20, scheduler: "karras" });
  assert.deepEqual(scheduleUpdates("KSampler", sampler, "ConsistentIDMergeStepScheduler", merge),
                   { steps: 20, scheduler: "karras" });
  assert.deepEqual(scheduleUpdates("KSamplerAdvanced", { ...sampler, steps: 50 }, "ConsistentIDSimple", merge),
                   { scheduler: "karras" });
});

test("merge_step and the sampler's other settings are never copied", () => {
  const updates = scheduleUpdates("KSampler", { ...sampler, merge_step: 3 }, "ConsistentIDMergeStepScheduler", merge);
  assert.deepEqual(Object.keys(updates).sort(), ["scheduler", "steps"]);
});

test("nothing is copied when the values agree or either node is another type", () => {
  assert.deepEqual(scheduleUpdates("KSampler", { steps: 50, scheduler: "normal" }, "ConsistentIDSimple", merge), {});
  assert.deepEqual(scheduleUpdates("SamplerCustom", sampler, "ConsistentIDMergeStepScheduler", merge), {});
  assert.deepEqual(scheduleUpdates("KSampler", sampler, "CLIPTextEncode", { text: "a man" }), {});
});

test("a setting missing on either side is no mismatch", () => {
  assert.deepEqual(scheduleMismatch([{ steps: 20 }], merge), { steps: [20] });
  assert.deepEqual(scheduleMismatch([sampler], { merge_step: 30 }), {});
  assert.deepEqual(scheduleMismatch([], merge), {});
});

test("two samplers fed by one node: their shared value, or every value where they disagree", () => {
  const other = { ...sampler, steps: 30 };
  assert.deepEqual(scheduleMismatch([sampler, other], { ...merge, steps: 20, scheduler: "karras" }), { steps: [20, 30] });
  assert.deepEqual(scheduleMismatch([sampler, { ...sampler }], { ...merge, steps: 20 }), { scheduler: ["karras"] });
});

test("the flag keeps the user's label, names the sampler's value or the disagreement, and clears when in step", () => {
  assert.equal(mismatchLabel(undefined, "steps", [20]), "⚠ steps ≠ sampler (20)");
  assert.equal(mismatchLabel("merge steps", "steps", [20]), "⚠ merge steps ≠ sampler (20)");
  assert.equal(mismatchLabel(undefined, "steps", [20, 30]), "⚠ steps: samplers differ (20 / 30)");
  assert.equal(mismatchLabel("merge steps", "steps", undefined), "merge steps");
  assert.equal(mismatchLabel(undefined, "steps", undefined), undefined);
  assert.ok(isFlag(mismatchLabel(undefined, "steps", [20])));
  assert.ok(!isFlag("merge steps") && !isFlag(undefined));
});

test("the merge node is found through inpainting and ControlNet conditioning nodes", () => {
  const merge = { type: "ConsistentIDMergeStepScheduler" };
  const controlnet = { type: "ControlNetApplyAdvanced", inputs: { positive: merge } };
  const inpaint = { type: "InpaintModelConditioning", inputs: { positive: controlnet } };
  const area = { type: "ConditioningSetArea", inputs: { conditioning: inpaint } };
  const upstream = (node, name) => node.inputs?.[name] ?? null;
  assert.equal(scheduleSource({ type: "KSampler", inputs: { positive: merge } }, upstream), merge);
  assert.equal(scheduleSource({ type: "KSampler", inputs: { positive: area } }, upstream), merge);
  const text = { type: "CLIPTextEncode" };
  assert.equal(scheduleSource({ type: "KSampler", inputs: { positive: text } }, upstream), null);
  const loop = { type: "ConditioningCombine" };
  loop.inputs = { conditioning: loop };
  assert.equal(scheduleSource({ type: "KSampler", inputs: { positive: loop } }, upstream), null);
});
