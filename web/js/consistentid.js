// Keeps ConsistentID Merge Step's (and the all-in-one node's) steps and scheduler equal to the KSampler its
// positive output feeds (directly or through inpainting/ControlNet conditioning nodes): a change on the sampler,
// or connecting it, copies them over, and a value that still differs (or samplers that disagree) is flagged in
// the ConsistentID node's widget label.
// Changes are caught through each widget's callback: the classic canvas and Nodes 2.0 (the Vue renderer) both call
// it, while node.onWidgetChanged is the classic canvas's alone.
import { app } from "../../scripts/app.js";
import {
  SAMPLERS, SCHEDULE_NODES, SYNCED, isFlag, mismatchLabel, scheduleMismatch, scheduleSource, scheduleUpdates,
} from "./merge_sync.js";

const INPUT = 1; // LiteGraph.INPUT

const widgetValues = (node) => Object.fromEntries((node.widgets ?? []).map((w) => [w.name, w.value]));
const widget = (node, name) => node.widgets?.find((w) => w.name === name);
const userLabels = new WeakMap(); // widget -> the user's own label, kept under the flag

function linkedInput(node, name) {
  const slot = node.findInputSlot(name);
  return slot < 0 ? null : node.getInputNode(slot);
}

const positiveSource = (sampler) => scheduleSource(sampler, linkedInput);

function setLabel(node, w, label) {
  w.label = label;
  // Nodes 2.0 and the saved workflow read a widget's label from its input slot, where it has one.
  const slot = node.inputs?.find((input) => input.widget?.name === w.name);
  if (slot) slot.label = label;
}

function markMismatch(node) {
  const samplers = node.graph?.nodes.filter((n) => SAMPLERS.has(n.type) && positiveSource(n) === node) ?? [];
  const differ = scheduleMismatch(samplers.map(widgetValues), widgetValues(node));
  for (const name of SYNCED) {
    const w = widget(node, name);
    if (!w) continue;
    if (!isFlag(w.label)) userLabels.set(w, w.label);
    setLabel(node, w, mismatchLabel(userLabels.get(w), name, differ[name]));
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

function chain(object, method, after) {
  const original = object[method];
  object[method] = function (...args) {
    const result = original?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

function onSyncedChange(node, react) {
  for (const name of SYNCED) {
    const w = widget(node, name);
    if (w) chain(w, "callback", () => react(node));
  }
}

app.registerExtension({
  name: "ConsistentID.MergeStepSync",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (SAMPLERS.has(nodeData.name)) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        onSyncedChange(this, syncFrom);
      });
      chain(nodeType.prototype, "onConnectionsChange", function (type, slot, connected) {
        // While a workflow loads, its saved values are kept; afterConfigureGraph flags mismatches.
        if (type !== INPUT || app.configuringGraph || !this.graph) return;
        if (connected && this.inputs[slot]?.name === "positive") syncFrom(this);
        else markAll(this.graph);
      });
    } else if (SCHEDULE_NODES.has(nodeData.name)) {
      chain(nodeType.prototype, "onNodeCreated", function () {
        onSyncedChange(this, markMismatch);
      });
    }
  },
  afterConfigureGraph() {
    markAll(app.graph);
  },
});
