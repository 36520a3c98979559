import assert from "node:assert/strict";
import test from "node:test";

import { missingModels, missingModelsMessage } from "../../web/js/missing_model_notes.js";

const spec = { folder: "consistentid", release: ["ConsistentID-v1.bin"], download: "https://hf.example/ConsistentID" };
const loader = (value, options) => ({
  type: "ConsistentIDLoader", title: "ConsistentID Loader", widgets: [{ name: "consistentid_name", value, options }],
});
const specsOf = (node) => (node.type === "ConsistentIDLoader" ? { consistentid_name: spec } : null);

test("a selected file the list lacks is missing; a listed one or another node's combo is not", () => {
  assert.deepEqual(missingModels([loader("ConsistentID-v1.bin", [])], specsOf),
                   [{ node: "ConsistentID Loader", file: "ConsistentID-v1.bin", folder: "consistentid",
                      download: spec.download }]);
  assert.deepEqual(missingModels([loader("ConsistentID-v1.bin", ["ConsistentID-v1.bin"])], specsOf), []);
  const other = { type: "CheckpointLoaderSimple", title: "Load Checkpoint", widgets: [{ name: "ckpt_name", value: "x", options: [] }] };
  assert.deepEqual(missingModels([other], specsOf), []);
});

test("the message names the folder, and the download page only for a release file", () => {
  const message = missingModelsMessage(missingModels([loader("ConsistentID-v1.bin", []), loader("mine.bin", [])], specsOf));
  assert.equal(message,
    "ConsistentID Loader: ConsistentID-v1.bin is not in models/consistentid/. Download it from "
    + "https://hf.example/ConsistentID and put it there, then press R to refresh.\n"
    + "ConsistentID Loader: mine.bin is not in models/consistentid/. Put it there or select another file, then press "
    + "R to refresh.");
});
