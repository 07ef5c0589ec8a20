// The dev floor-plan page (dev/floorplan.html, built on this library's
// bundle) in Debian's Chromium, driven by Playwright, against the gateway, a
// tansu broker and the stand-in API serving the sample restaurant. It checks
// what a person sees: the snapshot's tables, live changes, a reservation
// badge, a moved object, a reconnect after the gateway restarts, a token
// refreshed in band, and the final 1000. Screenshots go to build/screenshots/.

import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { type Browser, type Page, chromium } from "playwright-core";

import { Stack } from "./stack.js";

const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
const WAIT_MS = 20_000;
const SALON = "d8fba9a5-fdff-479a-af01-1454d68bc646";
const TERRAZA = "5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11";
const screenshots = fileURLToPath(new URL("../screenshots/", import.meta.url));

interface Entity {
  id: string;
  number?: number;
  objectId?: string;
}

let stack: Stack;
let browser: Browser;

before(async () => {
  // The page's tokens live 40 s and the notice comes 30 s before: the page refreshes in band
  // about 10 s after each token is made.
  stack = await Stack.start({ WS_REFRESH_NOTICE: "30s" }, { PAGE_TOKEN_LIFETIME: "40" });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  mkdirSync(screenshots, { recursive: true });
});

after(async () => {
  await browser?.close();
  await stack?.stop();
});

const liveTableNumbers = (page: Page) =>
  page.evaluate(() =>
    document.querySelector<HTMLElement>("#connection")!.dataset.state === "live"
      ? [...document.querySelectorAll("#floor .table .number")].map((e) => e.textContent)
      : null,
  );

async function waitUntil<T>(page: Page, what: string, probe: () => Promise<T | null | false>): Promise<T> {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const value = await probe();
    if (value !== null && value !== false) return value;
    if (Date.now() > deadline) {
      await page.screenshot({ path: `${screenshots}failed.png` });
      throw new Error(`not within ${WAIT_MS} ms: ${what} (screenshot: ${screenshots}failed.png)`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const logLines = (page: Page) =>
  page.evaluate(() => [...document.querySelectorAll<HTMLElement>("#log li")].map((li) => li.innerText.replace(/\s+/g, " ")));

/** Waits for a line of the page's event log holding `text`; returns the log. */
async function logged(page: Page, text: string): Promise<string[]> {
  return waitUntil(page, `a log line with ${JSON.stringify(text)}`, async () => {
    const lines = await logLines(page);
    return lines.some((line) => line.includes(text)) ? lines : null;
  });
}

/** Whether the body of `tableId` is painted in the legend's colour for `status`. */
const painted = (page: Page, tableId: string, status: string) =>
  page.evaluate(
    ([id, swatch]) => {
      const body = document.querySelector(`.table[data-id="${id}"] .body`);
      const legend = document.querySelector(`.swatch.${swatch}`);
      return !!body && !!legend && getComputedStyle(body).fill === getComputedStyle(legend).fill;
    },
    [tableId, status],
  );

test("the floor-plan page draws the section live, through a restart and a refresh, to the final 1000", { timeout: 180_000 }, async () => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const errors: string[] = [];
  page.on("pageerror", (error) => errors.push(String(error)));
  await page.goto(stack.hello.page);

  // The snapshot: the Salón's six tables, its two objects, its name.
  const numbers = await waitUntil(page, "the Salón's tables on a live page", () => liveTableNumbers(page));
  assert.deepEqual(numbers, ["1", "2", "3", "4", "5", "6"]);
  assert.equal(await page.locator("#floor .object").count(), 2);
  assert.equal(await page.locator("#section-name").textContent(), "Salón principal");
  const truth = (await stack.command("watched", { section: SALON })) as { tables: Entity[]; objects: Entity[] };
  const tables = truth.tables.map((table) => table.id);
  await waitUntil(page, "table 3 painted as available", () => painted(page, tables[2]!, "available"));

  // The dev command's tokens are short-lived: the page refreshes in band, without reconnecting.
  await logged(page, "auth.refreshed");

  // Live events, each changing what is drawn.
  await stack.command("table_status", { table: tables[2], status: "OCCUPIED" });
  await waitUntil(page, "table 3 painted as occupied", () => painted(page, tables[2]!, "occupied"));

  await stack.command("reservation_created", { table: tables[0], guests: 3, time: "20:30" });
  const badge = page.locator(`.table[data-id="${tables[0]}"] .badge text`);
  await waitUntil(page, "a reservation badge on table 1", async () => (await badge.count()) > 0 && (await badge.textContent()) === "1");

  const object = truth.objects[0]!.objectId!;
  await stack.command("object_moved", { object, x: 100, y: 12 });
  const moved = page.locator(`.object[data-id="${object}"] .body`);
  await waitUntil(page, "the object drawn at its new place", async () => (await moved.getAttribute("y")) === "12");

  // Table 9 comes over from the Terraza to the free slot at the grid's fourth column.
  const terraza = (await stack.command("watched", { section: TERRAZA })) as { tables: Entity[] };
  const nine = terraza.tables.find((table) => table.number === 9)!.id;
  await stack.command("table_moved", { table: nine, section: SALON, x: 78, y: 32 });
  const withNine = await waitUntil(page, "table 9 in the Salón", async () => {
    const drawn = await liveTableNumbers(page);
    return drawn?.includes("9") ? drawn : null;
  });
  assert.deepEqual(withNine, ["1", "2", "3", "4", "5", "6", "9"]);

  await stack.command("section_renamed", { section: SALON, name: "Salón · evento privado" });
  const lines = await logged(page, "section.updated renamed to “Salón · evento privado”");
  for (const expected of [
    "table.updated table 3 is now occupied",
    "reservation.created table 1 reserved for 3 at 20:30",
    "object.updated object moved to (100, 12)",
    "table.updated table 9 arrived (2 seats)",
  ]) {
    assert.ok(lines.some((line) => line.endsWith(expected)), `no ${JSON.stringify(expected)} in the event log: ${lines.join("\n")}`);
  }
  await page.screenshot({ path: `${screenshots}live.png` });

  // A deploy: the gateway drains (1001) and a new process takes over; the page comes back live
  // with what it had (the new process cannot resume the old one's buffer: a snapshot, so the
  // reservation badge, which snapshots do not carry, stays because its table is still there).
  await stack.command("restart");
  await logged(page, "closed 1001 the gateway is shutting down; reconnecting");
  const back = await waitUntil(page, "live again after the restart", () => liveTableNumbers(page));
  assert.deepEqual(back, ["1", "2", "3", "4", "5", "6", "9"]);
  assert.equal(await badge.textContent(), "1");
  await stack.command("table_status", { table: tables[2], status: "AVAILABLE" });
  await waitUntil(page, "table 3 available again, from the new process", () => painted(page, tables[2]!, "available"));

  // The section is deleted upstream: the gateway forwards it and closes with 1000, which the page
  // explains, and it does not retry (the section is gone).
  await stack.command("section_deleted", { section: SALON });
  const closed = await waitUntil(page, "the close code", () =>
    page.evaluate(() =>
      document.querySelector<HTMLElement>("#connection")!.dataset.state === "closed"
        ? document.querySelector<HTMLElement>("#close-info")!.innerText
        : null,
    ),
  );
  assert.match(closed, /1000 the section \(or its restaurant\) was deleted/);
  await page.screenshot({ path: `${screenshots}closed.png` });

  // The switcher opens the other section on a new connection, table 9 gone from it.
  await page.locator(`nav#sections button[data-section="${TERRAZA}"]`).click();
  const terrazaNumbers = await waitUntil(page, "the Terraza's tables", async () =>
    (await page.locator("#section-name").textContent()) === "Terraza" ? liveTableNumbers(page) : null,
  );
  assert.deepEqual(terrazaNumbers, ["7", "8", "10"]);
  assert.deepEqual(errors, [], "no script errors on the page");
});

test("Chromium negotiates permessage-deflate and reads what the gateway compresses", { timeout: 60_000 }, async () => {
  const page = await browser.newPage();
  await page.goto(stack.hello.page);
  const token = await stack.token(["ADMIN"], 600);
  const url = `${stack.hello.gateway}/ws/restaurant/${TERRAZA}`;
  await page.evaluate(
    ([url, token]) => {
      const w = window as unknown as { got: unknown[]; ws: WebSocket };
      w.got = [];
      w.ws = new WebSocket(url!, ["bearer", token!]);
      w.ws.onmessage = (message) => w.got.push(JSON.parse(message.data as string));
    },
    [url, token],
  );
  const got = (n: number) =>
    page.evaluate((n) => {
      const w = window as unknown as { got: { event: string }[]; ws: WebSocket };
      return w.got.length > n ? { extensions: w.ws.extensions, frame: w.got[n]! } : null;
    }, n);
  const hello = await waitUntil(page, "the snapshot", () => got(0));
  assert.equal(hello.extensions, "permessage-deflate; server_no_context_takeover; client_no_context_takeover");
  assert.equal(hello.frame.event, "section.snapshot");
  const terraza = (await stack.command("watched", { section: TERRAZA })) as { tables: Entity[] };
  await stack.command("table_status", { table: terraza.tables[0]!.id, status: "BLOCKED" });
  assert.equal((await waitUntil(page, "the event", () => got(1))).frame.event, "table.updated");
  // Over WS_COMPRESSION_MIN_BYTES: Chromium sends it compressed, and the gateway inflates it.
  await page.evaluate(() => (window as unknown as { ws: WebSocket }).ws.send(JSON.stringify({ event: "ping", padding: "p".repeat(2000) })));
  assert.deepEqual((await waitUntil(page, "the pong", () => got(2))).frame, { event: "pong" });
  const before = await stack.metric("mesaya_compression_bytes_before_total");
  const after = await stack.metric("mesaya_compression_bytes_after_total");
  assert.ok(after > 0 && after < before, `compressed bytes went out: ${before} before, ${after} after`);
  await page.close();
});
