import assert from "node:assert/strict";
import { test } from "node:test";

import {
  BACKOFF_BASE_MS,
  BACKOFF_CAP_MS,
  SHUTDOWN_SPREAD_MS,
  backoffDelay,
  decideOnClose,
  spreadDelay,
} from "../src/policy.js";

test("every close code of the gateway has its decision", () => {
  const table: [number, string][] = [
    [1000, "final"],
    [1001, "spread"],
    [1002, "final"],
    [1006, "backoff"],
    [1008, "final"],
    [1009, "final"],
    [1011, "backoff"],
    [1013, "backoff"],
    [1014, "backoff"],
    [4400, "final"],
    [4401, "backoff, new token"],
    [4403, "final"],
    [4404, "final"],
    [4408, "backoff"],
    [1005, "backoff"], // no status in the close frame: not one of ours, retry
    [4999, "backoff"], // a code a later gateway may add
  ];
  for (const [code, expected] of table) {
    const decision = decideOnClose(code);
    const actual =
      decision.kind === "final" ? "final" : `${decision.wait}${decision.tokenRejected ? ", new token" : ""}`;
    assert.equal(actual, expected, `close code ${code}`);
  }
});

test("backoff windows start at 0.5 s and double up to 30 s, with full jitter", () => {
  const top = () => 1 - Number.EPSILON;
  const windows = Array.from({ length: 9 }, (_, failures) => Math.round(backoffDelay(failures, top)));
  assert.deepEqual(windows, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  assert.equal(BACKOFF_BASE_MS, 500);
  assert.equal(BACKOFF_CAP_MS, 30_000);
  for (let failures = 0; failures < 12; failures++) {
    assert.equal(backoffDelay(failures, () => 0), 0, "full jitter reaches down to no wait");
    const half = backoffDelay(failures, () => 0.5);
    assert.equal(half, Math.min(30_000, 500 * 2 ** failures) / 2, "uniform over the window");
  }
  assert.equal(backoffDelay(10_000, top) < BACKOFF_CAP_MS, true, "no overflow after many failures");
});

test("the shutdown spread is uniform over at most 5 s", () => {
  assert.equal(SHUTDOWN_SPREAD_MS, 5_000);
  assert.equal(spreadDelay(() => 0), 0);
  assert.equal(spreadDelay(() => 0.5), 2_500);
  assert.ok(spreadDelay(() => 1 - Number.EPSILON) < 5_000);
});
