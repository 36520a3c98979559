// Keeps ConsistentID Merge Step's (and the all-in-one node's) steps and scheduler equal to
// the KSampler its positive output feeds (directly or through inpainting/ControlNet conditioning
// nodes): a change on the sampler, or connecting it, copies
// them over, and a value that still differs is flagged on the ConsistentID node's widget.
import { app } from "../../scripts/app.js";
import {
  SAMPLERS, SCHEDULE_NODES, SYNCED, mismatchLabel, scheduleMismatch, scheduleSource, scheduleUpdates,
} from "./merge_sync.js";

const INPUT = 1; // LiteGraph.INPUT

const widgetValues = (node) => Object.fromEntries((node.widgets ?? []).map((w) => [w.name, w.value]));
const widget = (node, name) => node.widgets?.find((w) => w.name === name);

function linkedInput(node, name) {
  const slot = node.findInputSlot(name);
  return slot < 0 ? null : node.getInputNode(slot);
}

const positiveSource = (sampler) => scheduleSource(sampler, linkedInput);

function markMismatch(node) {
  const sampler = node.graph?.nodes.find((n) => SAMPLERS.has(n.type) && positiveSource(n) === node);
  const differ = sampler ? scheduleMismatch(widgetValues(sampler), widgetValues(node)) : {};
  for (const name of SYNCED) {
    const w = widget(node, name);
    if (w) w.label = mismatchLabel(name, differ[name]);
  }
}

function markAll(graph) {
  for (const node of graph?.nodes ?? []) if (SCHEDULE_NODES.has(node.type)) markMismatch(node);
  graph?.setDirtyCanvas(true, true);
}

function syncFrom(sampler) {
  const node = positiveSource(sampler);
  if (!node) return;
  const updates = scheduleUpdates(sampler.type, widgetValues(sampler), node.type, widgetValues(node));
  for (const [name, value] of Object.entries(updates)) widget(node, name).value = value;
  markAll(sampler.graph);
}

function chain(prototype, method, after) {
  const original = prototype[method];
  prototype[method] = function (...args) {
    const result = original?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

app.registerExtension({
  name: "ConsistentID.MergeStepSync",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (SAMPLERS.has(nodeData.name)) {
      chain(nodeType.prototype, "onWidgetChanged", function (name) {
        if (SYNCED.includes(name)) syncFrom(this);
      });
      chain(nodeType.prototype, "onConnectionsChange", function (type, slot, connected) {
        // While a workflow loads, its saved values are kept; afterConfigureGraph flags mismatches.
        if (type !== INPUT || app.configuringGraph || !this.graph) return;
        if (connected && this.inputs[slot]?.name === "positive") syncFrom(this);
        else markAll(this.graph);
      });
    } else if (SCHEDULE_NODES.has(nodeData.name)) {
      chain(nodeType.prototype, "onWidgetChanged", function (name) {
        if (SYNCED.includes(name)) markMismatch(this);
      });
    }
  },
  afterConfigureGraph() {
    markAll(app.graph);
  },
});
