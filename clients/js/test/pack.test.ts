// What npm publishes: `npm pack` makes a tarball that installs into an empty
// project with no network (there are no runtime dependencies), imports in
// Node, and whose type declarations stand alone for both a browser and a
// Node project.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const packageDir = fileURLToPath(new URL("../../", import.meta.url));

function run(command: string, args: string[], cwd: string): string {
  try {
    return execFileSync(command, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (error) {
    const { stdout, stderr } = error as { stdout?: string; stderr?: string };
    throw new Error(`${command} ${args.join(" ")} failed:\n${stdout ?? ""}${stderr ?? ""}`);
  }
}

/** Type-checks `source` against the installed package with the given `lib`, in a project of its own. */
function typeCheck(app: string, name: string, lib: string[], source: string): void {
  writeFileSync(join(app, `${name}.ts`), source);
  const compilerOptions = { strict: true, noEmit: true, module: "nodenext", target: "es2022", lib, types: [] };
  writeFileSync(join(app, `${name}.json`), JSON.stringify({ compilerOptions, files: [`${name}.ts`] }));
  run(process.execPath, [join(packageDir, "node_modules/typescript/bin/tsc"), "-p", `${name}.json`], app);
}

test("npm pack installs offline into a fresh project and imports", { timeout: 180_000 }, () => {
  assert.ok(existsSync(join(packageDir, "dist", "index.js")), "dist/ is built (npm test builds it first)");
  const work = mkdtempSync(join(tmpdir(), "mesaya-realtime-pack-"));
  try {
    // dist/ is already built: the prepack script would only build it again.
    const [packed] = JSON.parse(run("npm", ["pack", "--ignore-scripts", "--json", "--pack-destination", work], packageDir));
    const files: string[] = packed.files.map((file: { path: string }) => file.path);
    for (const expected of ["package.json", "README.md", "dist/index.js", "dist/index.d.ts", "dist/store.js"]) {
      assert.ok(files.includes(expected), `the tarball has ${expected}`);
    }
    assert.deepEqual(
      files.filter((file) => !file.startsWith("dist/") && !["package.json", "README.md"].includes(file)),
      [],
      "nothing but dist/, the README and package.json",
    );

    const app = join(work, "app");
    mkdirSync(app);
    writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
    run("npm", ["install", "--offline", "--no-audit", "--no-fund", join(work, packed.filename)], app);
    const installed = JSON.parse(readFileSync(join(app, "node_modules/@mesaya/realtime/package.json"), "utf8"));
    assert.equal(installed.dependencies, undefined, "no runtime dependencies");

    writeFileSync(
      join(app, "check.mjs"),
      `import { watchSection, FloorStore } from "@mesaya/realtime";
const store = new FloorStore();
store.apply({ event: "section.snapshot", payload: { id: "s", tables: [{ id: "t", updatedAt: "2026-01-01T00:00:00.000Z" }], objects: [] } });
console.log(typeof watchSection, store.floor.tables.size);
`,
    );
    assert.equal(run(process.execPath, ["check.mjs"], app).trim(), "function 1");

    // The declarations stand alone: a browser project (whose DOM WebSocket
    // fits the option) and a project with neither DOM nor Node types.
    typeCheck(
      app,
      "browser",
      ["es2022", "dom"],
      `import { watchSection, type Floor, type StatusEvent, type WebSocketConstructor } from "@mesaya/realtime";
const ctor: WebSocketConstructor = WebSocket;
const watch = watchSection({ url: "wss://x", sectionId: "s", getToken: async () => "jwt", WebSocket: ctor,
  storage: { get: (k) => sessionStorage.getItem(k), set: (k, v) => sessionStorage.setItem(k, v) } });
const floor: Floor = watch.floor;
watch.onStatus((event: StatusEvent) => console.log(event.status, event.code, floor.tables.size));
`,
    );
    typeCheck(
      app,
      "bare",
      ["es2022"],
      `import { FloorStore, type ServerMessage, type Table, type Change } from "@mesaya/realtime";
const store = new FloorStore();
const message: ServerMessage = { event: "section.resumed", payload: { replayed: 0 } };
const change: Change = store.apply(message.event === "section.resumed" ? message : { event: "section.resumed", payload: { replayed: 1 } });
const tables: ReadonlyMap<string, Table> = store.floor.tables;
export { change, tables };
`,
    );
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
