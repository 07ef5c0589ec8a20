// `npm run bundle`: one minified ES module for a plain
// <script type="module"> (the dev floor-plan page), with nothing to fetch.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

import type * as Library from "../src/index.js";
import { FakeClock, at, settle, snapshot, socketFactory, table } from "./fakes.js";

const packageDir = fileURLToPath(new URL("../../", import.meta.url));
const bundle = `${packageDir}dist/mesaya-realtime.min.js`;

test("the browser bundle is one self-contained module that works", { timeout: 60_000 }, async () => {
  execFileSync("npm", ["run", "--silent", "bundle"], { cwd: packageDir, stdio: ["ignore", "ignore", "pipe"] });
  const code = readFileSync(bundle, "utf8");
  assert.doesNotMatch(code, /\bimport\s*[\w{*"'(]|\brequire\(/, "no imports left to resolve");
  assert.ok(code.length < 20_000, `small: ${code.length} bytes`);
  // The dev floor-plan page serves a committed copy, so that trying it needs no JavaScript tooling.
  const devCopy = readFileSync(`${packageDir}../../dev/mesaya-realtime.min.js`, "utf8");
  assert.ok(devCopy === code, "dev/mesaya-realtime.min.js is not this source's bundle: run `npm run bundle:dev`");

  const library = (await import(pathToFileURL(bundle).href)) as typeof Library;
  const { WebSocket, sockets } = socketFactory();
  const watch = library.watchSection({
    url: "wss://rt.example",
    sectionId: "s",
    getToken: () => "jwt",
    WebSocket,
    clock: new FakeClock(),
  });
  await settle();
  sockets[0]!.open();
  sockets[0]!.receive(snapshot([table("t1", at(10))]));
  assert.equal(watch.status, "live");
  assert.ok(watch.floor.tables.has("t1"));
  watch.close();
});
