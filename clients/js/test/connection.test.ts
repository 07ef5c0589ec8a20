import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { watchSection, type AuthEvent, type Change, type StatusEvent, type SyncStorage, type WatchOptions } from "../src/index.js";
import { FakeClock, SECTION_ID, at, settle, snapshot, socketFactory, table } from "./fakes.js";

const BASE = "wss://rt.example";
const SECTION_URL = `${BASE}/ws/restaurant/${SECTION_ID}`;

/** A watch on fake sockets and a fake clock; getToken answers jwt-1, jwt-2, ... */
function start(options: Partial<WatchOptions> = {}) {
  const clock = new FakeClock();
  const { WebSocket, sockets } = socketFactory();
  const random = { value: 0.5 };
  const tokenRequests: string[] = [];
  const statuses: StatusEvent[] = [];
  const changes: Change[] = [];
  const watch = watchSection({
    url: BASE,
    sectionId: SECTION_ID,
    getToken: async ({ reason }) => {
      tokenRequests.push(reason);
      return `jwt-${tokenRequests.length}`;
    },
    WebSocket,
    clock,
    random: () => random.value,
    ...options,
  });
  watch.onStatus((event) => statuses.push(event));
  watch.subscribe((_floor, change) => changes.push(change));
  const socket = () => {
    const last = sockets.at(-1);
    assert.ok(last, "a socket was made");
    return last;
  };
  /** Lets the pending attempt make its socket, opens it, and plays a snapshot (or `first`). */
  const connect = async (first: unknown = snapshot([table("t1", at(10))])) => {
    await settle();
    const s = socket();
    s.open();
    s.receive(first);
    return s;
  };
  return { watch, clock, sockets, random, tokenRequests, statuses, changes, socket, connect };
}

function memoryStorage(): SyncStorage & { data: Map<string, string> } {
  const data = new Map<string, string>();
  return { data, get: (key) => data.get(key), set: (key, value) => void data.set(key, value) };
}

function finals(statuses: StatusEvent[]): StatusEvent[] {
  return statuses.filter((event) => event.final);
}

describe("connecting", () => {
  test("the token goes as the bearer subprotocol, never in the URL", async () => {
    const h = start({ url: `${BASE}/` });
    assert.equal(h.watch.status, "connecting");
    await settle();
    assert.equal(h.socket().url, `${SECTION_URL}?resume=`);
    assert.deepEqual(h.socket().protocols, ["bearer", "jwt-1"]);
    assert.deepEqual(h.tokenRequests, ["connect"]);
    h.watch.close();
  });

  test("without resume there is no resume parameter", async () => {
    const h = start({ resume: false });
    await settle();
    assert.equal(h.socket().url, SECTION_URL);
    h.watch.close();
  });

  test("live on the snapshot; subscribers get the floor after each frame", async () => {
    const h = start();
    const floors: unknown[] = [];
    h.watch.subscribe((floor) => floors.push(floor));
    const s = await h.connect();
    assert.equal(h.watch.status, "live");
    assert.deepEqual(h.statuses, [{ status: "live", final: false }]);
    assert.ok(h.watch.floor.tables.has("t1"));
    s.receive({ event: "table.updated", payload: table("t1", at(20), { capacity: 6 }) });
    s.receive({ event: "table.updated", payload: table("t1", at(20), { capacity: 6 }) });
    assert.deepEqual(
      h.changes.map((c) => (c.kind === "event" ? `${c.event} ${c.applied}` : c.kind)),
      ["snapshot", "table.updated true", "table.updated false"],
    );
    assert.equal(floors[2], floors[1], "an ignored event passes the same floor");
    assert.equal(h.watch.floor.tables.get("t1")?.capacity, 6);
    h.watch.close();
  });

  test("the methods work detached from the watch", async () => {
    const h = start();
    const { subscribe, onStatus, close } = h.watch;
    let frames = 0;
    let closed = 0;
    subscribe(() => frames++);
    onStatus((event) => (closed += event.final ? 1 : 0));
    await h.connect();
    close();
    assert.deepEqual([frames, closed], [1, 1]);
  });

  test("an unsubscribed listener hears nothing more", async () => {
    const h = start();
    let calls = 0;
    const unsubscribe = h.watch.subscribe(() => calls++);
    const s = await h.connect();
    unsubscribe();
    s.receive({ event: "table.updated", payload: table("t1", at(20)) });
    assert.equal(calls, 1);
    h.watch.close();
  });

  test("protocol messages, unknown events and malformed frames leave the floor alone", async () => {
    const h = start();
    const s = await h.connect();
    const floor = h.watch.floor;
    for (const frame of ["not json", "3", '{"payload":{}}', { event: "pong" }, { event: "table.selecting", payload: {} }]) {
      s.receive(frame);
    }
    s.onmessage?.({ data: new Uint8Array([1, 2]) });
    assert.equal(h.watch.floor, floor);
    assert.equal(h.changes.length, 1);
    assert.equal(h.watch.status, "live");
    h.watch.close();
  });

  test("the platform's WebSocket is the default; without one watchSection throws", async () => {
    const global = globalThis as { WebSocket?: unknown };
    const saved = global.WebSocket;
    try {
      delete global.WebSocket;
      assert.throws(() => watchSection({ url: BASE, sectionId: SECTION_ID, getToken: () => "t" }), TypeError);
      const { WebSocket, sockets } = socketFactory();
      global.WebSocket = WebSocket;
      const clock = new FakeClock();
      const watch = watchSection({ url: BASE, sectionId: SECTION_ID, getToken: () => "t", clock });
      await settle();
      assert.equal(sockets.length, 1);
      watch.close();
    } finally {
      if (saved === undefined) delete global.WebSocket;
      else global.WebSocket = saved;
    }
  });

  test("missing options are refused at once", () => {
    const { WebSocket } = socketFactory();
    const base = { url: BASE, sectionId: SECTION_ID, getToken: () => "t", WebSocket };
    for (const broken of [{ url: "" }, { sectionId: "" }, { getToken: undefined }]) {
      assert.throws(() => watchSection({ ...base, ...broken } as WatchOptions), TypeError, JSON.stringify(broken));
    }
  });
});

describe("close codes", () => {
  for (const code of [1000, 1002, 1008, 1009, 4400, 4403, 4404]) {
    test(`${code} is final: reported once, nothing left behind`, async () => {
      const h = start();
      const s = await h.connect();
      s.serverClose(code, "bye");
      assert.deepEqual(h.statuses.at(-1), { status: "closed", code, reason: "bye", final: true });
      assert.equal(h.watch.status, "closed");
      assert.equal(h.clock.pending, 0);
      h.clock.advance(120_000);
      await settle();
      assert.equal(h.sockets.length, 1, "no reconnect");
      h.watch.close();
      assert.equal(finals(h.statuses).length, 1, "close() after a final close reports nothing");
    });
  }

  for (const code of [1006, 1011, 1013, 1014, 4408]) {
    test(`${code} backs off, then reconnects`, async () => {
      const h = start();
      h.random.value = 0.9;
      const s = await h.connect();
      s.serverClose(code);
      const reconnecting = h.statuses.at(-1);
      assert.equal(reconnecting?.status, "reconnecting");
      assert.equal(reconnecting?.code, code);
      assert.equal(reconnecting?.final, false);
      assert.equal(reconnecting?.retryIn, 450, "0.9 of the first 500 ms window");
      h.clock.advance(449);
      await settle();
      assert.equal(h.sockets.length, 1, "not before the delay");
      h.clock.advance(1);
      await settle();
      assert.equal(h.sockets.length, 2);
      assert.deepEqual(h.tokenRequests, ["connect", "connect"], "getToken before every attempt");
      h.watch.close();
    });
  }

  test("backoff doubles with each failed attempt up to 30 s", async () => {
    const h = start();
    h.random.value = 1 - Number.EPSILON;
    const windows: number[] = [];
    for (let i = 0; i < 9; i++) {
      await settle();
      h.socket().serverClose(1006);
      const retryIn = h.statuses.at(-1)?.retryIn ?? -1;
      windows.push(Math.round(retryIn));
      h.clock.advance(retryIn);
    }
    assert.deepEqual(windows, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    h.watch.close();
  });

  test("the jitter spreads delays over the whole window", async () => {
    const h = start();
    const seen: number[] = [];
    for (const value of [0, 0.25, 0.75]) {
      h.random.value = value;
      await settle();
      h.socket().serverClose(1006);
      seen.push(h.statuses.at(-1)?.retryIn ?? -1);
      h.clock.advance(seen.at(-1)!);
    }
    assert.deepEqual(seen, [0, 250, 1500]);
    h.watch.close();
  });

  for (const [liveFor, window] of [
    [30_000, 500],
    [29_999, 16_000],
  ] as const) {
    test(`a connection live for ${liveFor} ms ${window === 500 ? "resets" : "does not reset"} the backoff`, async () => {
      const h = start(); // random 0.5: whole milliseconds, so "live for" is exact
      for (let i = 0; i < 5; i++) {
        await settle();
        h.socket().serverClose(1006);
        h.clock.advance(h.statuses.at(-1)!.retryIn!);
      }
      const s = await h.connect();
      h.clock.advance(liveFor);
      s.receive({ event: "pong" }); // answers the heartbeat's ping at 30 s
      h.random.value = 1 - Number.EPSILON;
      s.serverClose(1011);
      assert.equal(Math.round(h.statuses.at(-1)!.retryIn!), window);
      h.watch.close();
    });
  }

  test("1001 reconnects within 5 s whatever the backoff, and does not grow it", async () => {
    const h = start();
    h.random.value = 1 - Number.EPSILON;
    for (let i = 0; i < 5; i++) {
      await settle();
      h.socket().serverClose(1006);
      h.clock.advance(h.statuses.at(-1)!.retryIn!);
    }
    for (const value of [1 - Number.EPSILON, 0, 0.5]) {
      h.random.value = value;
      await settle();
      h.socket().serverClose(1001, "shutting down");
      const retryIn = h.statuses.at(-1)!.retryIn!;
      assert.ok(retryIn >= 0 && retryIn < 5_000, `1001 waits ${retryIn}`);
      assert.equal(retryIn, value * 5_000);
      h.clock.advance(retryIn);
    }
    h.random.value = 1 - Number.EPSILON;
    await settle();
    h.socket().serverClose(1006);
    assert.equal(Math.round(h.statuses.at(-1)!.retryIn!), 16_000, "the sixth failure's window, as before the 1001s");
    h.watch.close();
  });

  test("4401 asks getToken for a new token until a connection goes live", async () => {
    const h = start();
    const s = await h.connect();
    s.serverClose(4401, "token expired");
    assert.equal(h.statuses.at(-1)?.status, "reconnecting");
    h.clock.advance(h.statuses.at(-1)!.retryIn!);
    await settle();
    assert.deepEqual(h.tokenRequests, ["connect", "rejected"]);
    assert.deepEqual(h.socket().protocols, ["bearer", "jwt-2"]);
    h.socket().serverClose(1006); // the upgrade failed again (a 401 the browser hides)
    h.clock.advance(h.statuses.at(-1)!.retryIn!);
    const again = await h.connect();
    assert.deepEqual(h.tokenRequests, ["connect", "rejected", "rejected"]);
    again.serverClose(1006);
    h.clock.advance(h.statuses.at(-1)!.retryIn!);
    await settle();
    assert.deepEqual(h.tokenRequests, ["connect", "rejected", "rejected", "connect"]);
    h.watch.close();
  });

  test("a getToken that fails is retried with backoff", async () => {
    let calls = 0;
    const h = start({
      getToken: async () => {
        if (++calls === 1) throw new Error("offline");
        return "jwt";
      },
    });
    await settle();
    assert.equal(h.sockets.length, 0);
    assert.deepEqual(h.statuses.at(-1), {
      status: "reconnecting",
      reason: "getToken failed: offline",
      final: false,
      retryIn: 250,
    });
    h.clock.advance(250);
    await settle();
    assert.equal(h.sockets.length, 1);
    h.watch.close();
  });
});

describe("token refresh in band", () => {
  test("auth.expiring asks getToken and sends auth.refresh on the same connection", async () => {
    const h = start();
    const told: AuthEvent[] = [];
    h.watch.onAuth((event) => told.push(event));
    const s = await h.connect();
    s.receive({ event: "auth.expiring", payload: { exp: 1_900_000_000 } });
    await settle();
    assert.deepEqual(h.tokenRequests, ["connect", "expiring"]);
    assert.deepEqual(s.sent, [{ event: "auth.refresh", payload: { token: "jwt-2" } }]);
    s.receive({ event: "auth.refreshed", payload: { exp: 1_900_003_600 } });
    assert.deepEqual(told, [
      { kind: "expiring", exp: 1_900_000_000 },
      { kind: "refreshed", exp: 1_900_003_600 },
    ]);
    assert.equal(h.watch.status, "live");
    assert.equal(h.sockets.length, 1);
    h.watch.close();
  });

  test("a refresh whose token comes after a reconnect is not sent on the new socket", async () => {
    let release: (token: string) => void = () => {};
    let calls = 0;
    const h = start({
      getToken: () => (++calls === 2 ? new Promise<string>((resolve) => (release = resolve)) : "jwt"),
    });
    const s = await h.connect();
    s.receive({ event: "auth.expiring", payload: { exp: 1 } });
    s.serverClose(1006);
    h.clock.advance(h.statuses.at(-1)!.retryIn!);
    const next = await h.connect();
    release("late");
    await settle();
    assert.deepEqual(next.sent, []);
    h.watch.close();
  });

  test("auth.refresh_failed drops the socket and reconnects as after a 4401", async () => {
    const h = start();
    const s = await h.connect();
    const told: AuthEvent[] = [];
    h.watch.onAuth((event) => told.push(event));
    s.receive({ event: "section.position", payload: { token: "pos-1" } });
    s.receive({ event: "auth.refresh_failed", payload: { reason: "expired" } });
    assert.deepEqual(told, [{ kind: "refresh_failed", reason: "expired" }]);
    assert.equal(s.endedBy, "terminated");
    assert.deepEqual(h.statuses.at(-1), {
      status: "reconnecting",
      code: 4401,
      reason: "token refresh failed: expired",
      final: false,
      retryIn: 250,
    });
    h.clock.advance(250);
    await settle();
    assert.deepEqual(h.tokenRequests, ["connect", "rejected"]);
    assert.equal(h.socket().url, `${SECTION_URL}?resume=pos-1`);
    h.watch.close();
  });
});

describe("heartbeat", () => {
  test("silence sends a ping; any frame answers it; a silent answer drops the socket", async () => {
    const h = start();
    const s = await h.connect();
    h.clock.advance(29_999);
    assert.deepEqual(s.sent, []);
    h.clock.advance(1);
    assert.deepEqual(s.sent, [{ event: "ping" }]);
    h.clock.advance(9_999);
    s.receive({ event: "pong" });
    h.clock.advance(20_000);
    assert.equal(h.watch.status, "live", "answered in time");
    assert.equal(s.sent.length, 1, "30 s from the pong, not from the ping");
    h.clock.advance(10_000);
    assert.equal(s.sent.length, 2);
    h.clock.advance(9_999);
    assert.equal(s.endedBy, undefined);
    h.clock.advance(1);
    assert.equal(s.endedBy, "terminated");
    assert.deepEqual(h.statuses.at(-1), {
      status: "reconnecting",
      code: 1006,
      reason: "heartbeat timeout",
      final: false,
      retryIn: 250,
    });
    h.clock.advance(250);
    await settle();
    assert.equal(h.sockets.length, 2);
    h.watch.close();
  });

  test("frames keep the connection quiet: no ping while events flow, one timer only", async () => {
    const h = start();
    const s = await h.connect();
    for (let i = 1; i <= 10; i++) {
      h.clock.advance(20_000);
      s.receive({ event: "table.updated", payload: table("t1", at(10 + i)) });
      assert.equal(h.clock.pending, 1);
    }
    assert.deepEqual(s.sent, []);
    h.watch.close();
  });

  test("an attempt that never opens is given up after heartbeat + timeout", async () => {
    const h = start({ heartbeat: 1_000, heartbeatTimeout: 500 });
    await settle();
    const s = h.socket();
    h.clock.advance(1_499);
    assert.equal(s.endedBy, undefined);
    h.clock.advance(1);
    assert.equal(s.endedBy, "terminated");
    assert.equal(h.statuses.at(-1)?.status, "reconnecting");
    h.watch.close();
  });

  test("heartbeat 0 turns it off", async () => {
    const h = start({ heartbeat: 0 });
    const s = await h.connect();
    assert.equal(h.clock.pending, 0);
    h.clock.advance(10 * 60_000);
    assert.deepEqual(s.sent, []);
    h.watch.close();
  });
});

describe("close()", () => {
  function assertClosedCleanly(h: ReturnType<typeof start>): void {
    assert.deepEqual(finals(h.statuses), [{ status: "closed", code: 1000, reason: "closed by the client", final: true }]);
    assert.equal(h.watch.status, "closed");
    assert.equal(h.clock.pending, 0, "no timer left");
    for (const s of h.sockets) assert.notEqual(s.readyState, 1, "no socket left open");
  }

  test("while live: the socket is closed with 1000", async () => {
    const h = start();
    const s = await h.connect();
    h.watch.close();
    h.watch.close();
    assert.equal(s.endedBy, 1000);
    assertClosedCleanly(h);
    s.serverClose(1000); // the close handshake completes: nothing more is reported
    assertClosedCleanly(h);
  });

  test("while the socket is connecting", async () => {
    const h = start();
    await settle();
    h.watch.close();
    assert.equal(h.socket().endedBy, 1000);
    assertClosedCleanly(h);
  });

  test("while waiting to reconnect", async () => {
    const h = start();
    const s = await h.connect();
    s.serverClose(1006);
    assert.equal(h.clock.pending, 1);
    h.watch.close();
    assertClosedCleanly(h);
    h.clock.advance(60_000);
    await settle();
    assert.equal(h.sockets.length, 1);
  });

  test("while getToken is pending: its answer opens nothing", async () => {
    let release: (token: string) => void = () => {};
    const h = start({ getToken: () => new Promise<string>((resolve) => (release = resolve)) });
    await settle();
    h.watch.close();
    release("jwt");
    await settle();
    assert.equal(h.sockets.length, 0);
    assertClosedCleanly(h);
  });

  test("from a listener, in the middle of a frame", async () => {
    const h = start();
    h.watch.onStatus((event) => {
      if (event.status === "live") h.watch.close();
    });
    await h.connect();
    assert.equal(h.changes.length, 0, "the snapshot is not reported after the close");
    assertClosedCleanly(h);
  });
});

describe("section or restaurant deleted", () => {
  for (const event of ["section.deleted", "restaurant.deleted"]) {
    test(`${event} ends the watch as final with 1000`, async () => {
      const storage = memoryStorage();
      const h = start({ storage });
      const s = await h.connect();
      s.receive({ event: "section.position", payload: { token: "pos-1" } });
      assert.ok(storage.data.get(`mesaya-realtime:${SECTION_ID}`));
      const payload = event === "section.deleted" ? snapshot([]).payload : { id: snapshot([]).payload.restaurantId };
      s.receive({ event, payload });
      assert.equal(h.changes.at(-1)?.kind, "event");
      assert.deepEqual(finals(h.statuses), [{ status: "closed", code: 1000, reason: event, final: true }]);
      assert.equal(s.endedBy, 1000);
      assert.equal(h.clock.pending, 0);
      assert.equal(storage.data.get(`mesaya-realtime:${SECTION_ID}`), "", "nothing left to resume");
      s.serverClose(1000);
      assert.equal(finals(h.statuses).length, 1);
    });
  }
});

describe("resume", () => {
  test("the position token is used only with the floor it belongs to", async () => {
    const h = start();
    const s1 = await h.connect();
    assert.equal(s1.url, `${SECTION_URL}?resume=`, "no floor yet: opt in, nothing to resume");
    s1.receive({ event: "section.position", payload: { token: "pos-1" } });
    s1.serverClose(1006);
    h.clock.advance(h.statuses.at(-1)!.retryIn!);

    // The gateway could not resume and sent a snapshot: pos-1 belongs to the old floor.
    const s2 = await h.connect(snapshot([table("t2", at(10))]));
    assert.equal(s2.url, `${SECTION_URL}?resume=pos-1`);
    assert.deepEqual([...h.watch.floor.tables.keys()], ["t2"]);
    s2.serverClose(4408);
    h.clock.advance(h.statuses.at(-1)!.retryIn!);

    const s3 = await h.connect({ event: "section.resumed", payload: { replayed: 0 } });
    assert.equal(s3.url, `${SECTION_URL}?resume=`);
    h.watch.close();
  });

  test("section.resumed keeps the floor; the replayed frames apply on top, duplicates ignored", async () => {
    const h = start();
    const s1 = await h.connect();
    s1.receive({ event: "table.updated", payload: table("t1", at(20), { capacity: 5 }) });
    s1.receive({ event: "section.position", payload: { token: "pos-1" } });
    s1.receive({ event: "table.updated", payload: table("t1", at(21), { capacity: 6 }) });
    s1.serverClose(1006); // abrupt: the frame after pos-1 is replayed
    h.clock.advance(h.statuses.at(-1)!.retryIn!);
    const s2 = await h.connect({ event: "section.resumed", payload: { replayed: 2 } });
    assert.equal(s2.url, `${SECTION_URL}?resume=pos-1`);
    assert.equal(h.watch.status, "live");
    assert.equal(h.watch.floor.tables.get("t1")?.capacity, 6);
    s2.receive({ event: "table.updated", payload: table("t1", at(21), { capacity: 6 }) });
    s2.receive({ event: "table.updated", payload: table("t1", at(22), { capacity: 7 }) });
    assert.deepEqual(
      h.changes.slice(-3).map((c) => (c.kind === "event" ? c.applied : c.kind)),
      ["resumed", false, true],
    );
    assert.equal(h.watch.floor.tables.get("t1")?.capacity, 7);
    h.watch.close();
  });

  test("1001 resumes after the position sent right before it", async () => {
    const h = start();
    const s = await h.connect();
    s.receive({ event: "section.position", payload: { token: "pos-9" } });
    s.serverClose(1001);
    h.clock.advance(h.statuses.at(-1)!.retryIn!);
    await settle();
    assert.equal(h.socket().url, `${SECTION_URL}?resume=pos-9`);
    h.watch.close();
  });
});

describe("storage", () => {
  test("a reload resumes with the stored token and shows the stored floor at once", async () => {
    const storage = memoryStorage();
    const first = start({ storage });
    const s = await first.connect(snapshot([table("t1", at(10)), table("t2", at(10))]));
    s.receive({ event: "table.deleted", payload: table("t2", at(10)) });
    s.receive({ event: "section.position", payload: { token: "pos-1" } });
    first.watch.close();
    assert.ok(storage.data.get(`mesaya-realtime:${SECTION_ID}`), "close() keeps the entry");

    const second = start({ storage });
    assert.deepEqual([...second.watch.floor.tables.keys()], ["t1"], "before any frame");
    await settle();
    assert.equal(second.socket().url, `${SECTION_URL}?resume=pos-1`);
    second.socket().open();
    second.socket().receive({ event: "section.resumed", payload: { replayed: 1 } });
    // The replayed delete's pre-delete update stays out: remembered deletes were stored too.
    second.socket().receive({ event: "table.updated", payload: table("t2", at(10)) });
    assert.deepEqual([...second.watch.floor.tables.keys()], ["t1"]);
    assert.equal(second.watch.status, "live");
    second.watch.close();
  });

  test("a floor without its token, or an unreadable entry, is not resumed", async () => {
    const key = `mesaya-realtime:${SECTION_ID}`;
    const floor = { section: snapshot([]).payload, tables: [], objects: [], reservations: [], deleted: [] };
    for (const stored of [
      JSON.stringify({ v: 1, floor }),
      JSON.stringify({ v: 1, token: "pos-1" }),
      JSON.stringify({ v: 2, token: "pos-1", floor }),
      "{not json",
      "",
    ]) {
      const storage = memoryStorage();
      storage.data.set(key, stored);
      const h = start({ storage });
      await settle();
      assert.equal(h.socket().url, `${SECTION_URL}?resume=`, stored);
      assert.equal(h.watch.floor.section, undefined);
      h.watch.close();
    }
  });

  test("a storage that throws does not stop the watch", async () => {
    const storage: SyncStorage = {
      get: () => {
        throw new Error("denied");
      },
      set: () => {
        throw new Error("quota");
      },
    };
    const h = start({ storage });
    const s = await h.connect();
    s.receive({ event: "section.position", payload: { token: "pos-1" } });
    assert.equal(h.watch.status, "live");
    h.watch.close();
  });

  test("a final close from the gateway forgets the section", async () => {
    const storage = memoryStorage();
    const h = start({ storage });
    const s = await h.connect();
    s.receive({ event: "section.position", payload: { token: "pos-1" } });
    s.serverClose(4404);
    const again = start({ storage });
    await settle();
    assert.equal(again.socket().url, `${SECTION_URL}?resume=`);
    again.watch.close();
  });

  test("without resume, storage is neither read nor written", async () => {
    const storage = memoryStorage();
    storage.data.set(`mesaya-realtime:${SECTION_ID}`, "{}");
    const h = start({ storage, resume: false });
    const s = await h.connect();
    s.receive({ event: "section.position", payload: { token: "pos-1" } });
    assert.deepEqual([...storage.data.values()], ["{}"]);
    h.watch.close();
  });
});
