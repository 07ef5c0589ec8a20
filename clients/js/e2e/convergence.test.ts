// Convergence: the library keeps a section's floor equal to the truth
// through everything a real evening throws at a connection. A few thousand
// random upstream events (the sample restaurant's simulator, both sections)
// go through tansu and the real gateway while the test, in a shuffled order,
// drops the client's socket, stops reading until the gateway gives up on it
// (4408), restarts the gateway (SIGTERM, 1001, a new process) and lets a
// token expire without a refresh (4401, then `getToken`). At the end the
// library's floor must equal what the database holds, and the test reports
// how many snapshots and resumes it took.

import assert from "node:assert/strict";
import { test } from "node:test";

import { WebSocket } from "ws";

import { type Floor, type StatusEvent, type TokenRequest, watchSection } from "../src/index.js";
import { Stack, waitFor } from "./stack.js";

const SALON = "d8fba9a5-fdff-479a-af01-1454d68bc646";
const EVENTS_PER_ROUND = 300;
const ROUNDS = ["drop", "slow", "restart", "expire", "drop", "restart", "drop", "slow"] as const;
/**
 * While the client does not read, tables are imported in steps of BULK, each with NOTES bytes of
 * notes, until the reader is gone (see the round): the socket buffers of loopback TCP (megabytes) fill
 * before its queue does. Then the import is deleted again, so that the floor stays small.
 */
const BULK = 100;
const NOTES = 16_000;
const MAX_BULK_STEPS = 40;
const SLOW_CLOSES = "mesaya_slow_consumer_closes_total";
const CONNECTIONS = "mesaya_connections";

type Entity = Record<string, unknown> & { id: string };
interface Truth {
  section: Entity;
  tables: Entity[];
  objects: Entity[];
}

const byId = (entities: Iterable<Entity>) => [...entities].sort((a, b) => a.id.localeCompare(b.id));

/** Fisher-Yates with Math.random: the order differs per run, and is printed. */
function shuffled<T>(items: readonly T[]): T[] {
  const copy = [...items];
  for (let i = copy.length - 1; i > 0; i -= 1) {
    const j = Math.floor(Math.random() * (i + 1));
    [copy[i], copy[j]] = [copy[j]!, copy[i]!];
  }
  return copy;
}

/**
 * Where the floor differs from the truth, in words; empty when they agree. `excused` collects the
 * held reservations that are stale only because a change to them fell in a gap that ended with a
 * snapshot (taken at one of `snapshotsAt`): snapshots carry no reservations (CONTRACT), so no
 * client could know of it. Any other stale reservation is a difference.
 */
function differences(
  floor: Floor,
  truth: Truth,
  reservations: Map<string, Entity>,
  snapshotsAt: number[],
  excused: Set<string> = new Set(),
): string[] {
  const found: string[] = [];
  const same = (what: string, a: unknown, b: unknown) => {
    try {
      assert.deepStrictEqual(a, b);
    } catch {
      found.push(`${what}: ${JSON.stringify(a)} held, ${JSON.stringify(b)} true`);
    }
  };
  same("the section", floor.section, truth.section);
  same("the tables", byId(floor.tables.values() as Iterable<Entity>), byId(truth.tables));
  same("the objects", byId(floor.objects.values() as Iterable<Entity>), byId(truth.objects));
  for (const held of floor.reservations.values()) {
    const latest = reservations.get(held.id);
    const changedBefore = (time: number) =>
      Date.parse(String(held.updatedAt)) <= time && Date.parse(String(latest?.updatedAt)) <= time;
    if (latest && latest.updatedAt !== held.updatedAt && snapshotsAt.some(changedBefore)) excused.add(held.id);
    else same(`reservation ${held.id}`, held, latest);
  }
  return found;
}

test("the floor converges to the truth through drops, a slow reader, restarts and an expired token", { timeout: 600_000 }, async (t) => {
  const stack = await Stack.start({
    DRAIN_TIMEOUT: "3s",
    // A queue small in bytes, so that a reader that stops is closed (4408) soon after its socket
    // buffers fill; in frames it keeps the default, so that a resume after a drop is no backlog.
    WS_QUEUE_MAX_BYTES: "1048576",
    RESUME_BUFFER: "4096",
  });
  let socket: WebSocket | undefined;
  class Tracked extends WebSocket {
    constructor(url: string, protocols: string[]) {
      super(url, protocols);
      socket = this;
    }
  }
  // The expire round hands out one 3-second token and refuses to refresh it; the 4401 that
  // follows asks for a token again (`rejected`), which is a long one.
  let shortTokenNext = false;
  let refusingRefresh = false;
  const tokenRequests: TokenRequest["reason"][] = [];
  const getToken = async ({ reason }: TokenRequest) => {
    tokenRequests.push(reason);
    if (reason === "expiring" && refusingRefresh) throw new Error("no refresh in this round");
    if (reason === "rejected") refusingRefresh = false;
    if (shortTokenNext) {
      [shortTokenNext, refusingRefresh] = [false, true];
      return stack.token(["ADMIN"], 3);
    }
    return stack.token(["ADMIN"], 600);
  };
  const watch = watchSection({
    url: stack.hello.gateway,
    sectionId: SALON,
    getToken,
    WebSocket: Tracked,
    // Full jitter over a fifth of each delay: the policy's shape, at a pace a test can wait for.
    random: () => Math.random() * 0.2,
  });
  const statuses: StatusEvent[] = [];
  watch.onStatus((event) => statuses.push(event));
  const changes = { snapshot: 0, resumed: 0, applied: 0, ignored: 0 };
  const snapshotsAt: number[] = [];
  watch.subscribe((_floor, change) => {
    if (change.kind === "snapshot") snapshotsAt.push(Date.now());
    if (change.kind !== "event") changes[change.kind] += 1;
    else if (change.applied) changes.applied += 1;
    else changes.ignored += 1;
  });
  const closesWith = (code: number) => statuses.filter((s) => s.code === code).length;
  const live = () => waitFor("the watch live again", () => watch.status === "live", 60_000);

  try {
    await live();
    const order = shuffled(ROUNDS);
    t.diagnostic(`rounds: ${order.join(", ")}; simulator seed ${stack.hello.seed}`);
    let emitted = 0;
    for (const round of order) {
      await stack.command("simulate", { count: EVENTS_PER_ROUND / 2 });
      const before = statuses.length;
      switch (round) {
        case "drop":
          socket!.terminate();
          break;
        case "slow": {
          const slowCloses = await stack.metric(SLOW_CLOSES);
          socket!.pause();
          // The stopped reader ends with a 4408 once its queue is full. When the imports run
          // slower than the deadlines (a loaded machine), it ends first by the gateway's pong
          // deadline (no connection left) or by the library's own heartbeat (a new status).
          const readerGone = async () =>
            statuses.length > before ||
            (await stack.metric(SLOW_CLOSES)) > slowCloses ||
            (await stack.metricSum(CONNECTIONS)) === 0;
          let steps = 0;
          while (!(await readerGone())) {
            assert.ok(steps++ < MAX_BULK_STEPS, `the stopped reader still connected after ${steps * BULK} imported tables`);
            await stack.command("tables_created", { section: SALON, count: BULK, notes: NOTES });
            emitted += BULK;
          }
          emitted += (await stack.command("imports_deleted", { section: SALON })).emitted as number;
          socket!.resume();
          break;
        }
        case "restart":
          await stack.command("restart");
          break;
        case "expire": {
          shortTokenNext = true;
          const rejected = closesWith(4401);
          socket!.terminate();
          await waitFor("a 4401 for the token left to expire", () => closesWith(4401) > rejected, 30_000);
          break;
        }
      }
      await waitFor(`a reconnect after the ${round}`, () => statuses.length > before, 60_000);
      await stack.command("simulate", { count: EVENTS_PER_ROUND / 2 });
      emitted += EVENTS_PER_ROUND;
      await live();
    }

    const truth = (await stack.command("watched", { section: SALON })) as unknown as Truth;
    const latest = (await stack.command("reservations")).reservations as Entity[];
    const reservations = new Map(latest.map((r) => [r.id, r]));
    const differ = (excused?: Set<string>) => differences(watch.floor, truth, reservations, snapshotsAt, excused);
    await waitFor("the floor equal to the truth", () => differ().length === 0, 30_000).catch((error: Error) => {
      throw new Error(`${error.message}: differs in ${differ().join(", ")}`);
    });
    const excused = new Set<string>();
    differ(excused);
    const calls = (await stack.command("api_calls", { section: SALON })).calls as number;
    const resumes = (await stack.metricLines()).filter((l) => l.startsWith("mesaya_resumes_total"));
    t.diagnostic(`the last gateway process: ${resumes.join("; ")}`);
    t.diagnostic(
      `${emitted} events; ${changes.snapshot} snapshots (${calls} API calls), ${changes.resumed} resumes, ` +
        `${changes.applied} events applied, ${changes.ignored} ignored; ${excused.size} of ` +
        `${watch.floor.reservations.size} reservations held stale after a snapshot fallback; closes: ` +
        `${statuses.filter((s) => s.code !== undefined).map((s) => s.code).join(" ")}; ` +
        `tokens asked: ${tokenRequests.join(" ")}`,
    );
    assert.ok(closesWith(1001) >= 2, "every restart was seen as a 1001");
    // A slow reader finds the 4408 after what its socket held, or, when the close frame did not
    // fit, the connection simply ends (1006), as a drop does.
    assert.ok(closesWith(4408) + closesWith(1006) >= 5, "the drops and slow reads were seen");
    assert.ok(tokenRequests.includes("rejected"), "the 4401 asked getToken for a new token");
    assert.ok(changes.resumed >= 1, "some reconnects resumed instead of taking a snapshot");
    assert.equal(watch.floor.tables.size, truth.tables.length);
  } finally {
    watch.close();
    await stack.stop();
  }
});
