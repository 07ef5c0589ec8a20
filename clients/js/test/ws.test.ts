// The library against a real WebSocket server (the `ws` package), on
// loopback: the handshake a browser or Node client really makes, text
// frames, close codes, and the resume URL after a reconnect.

import assert from "node:assert/strict";
import { once } from "node:events";
import type { IncomingMessage } from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";

import { WebSocket, WebSocketServer } from "ws";

import { watchSection, type Change, type Status } from "../src/index.js";
import { SECTION_ID, at, snapshot, table } from "./fakes.js";

interface Accepted {
  socket: WebSocket;
  request: IncomingMessage;
}

/** The subprotocols a client offered (`ws` writes them without a space after the comma). */
function offered(request: IncomingMessage): string[] {
  return String(request.headers["sec-websocket-protocol"]).split(",").map((p) => p.trim());
}

test("a ws server sees the bearer subprotocol, and a 4401 leads to a resume with a new token", async () => {
  const server = new WebSocketServer({
    port: 0,
    host: "127.0.0.1",
    handleProtocols: (protocols) => (protocols.has("bearer") ? "bearer" : false),
  });
  await once(server, "listening");
  const accepted: Accepted[] = [];
  const waiting: ((value: Accepted) => void)[] = [];
  server.on("connection", (socket, request) => {
    const next = waiting.shift();
    if (next) next({ socket, request });
    else accepted.push({ socket, request });
  });
  const nextConnection = () =>
    new Promise<Accepted>((resolve) => {
      const ready = accepted.shift();
      if (ready) resolve(ready);
      else waiting.push(resolve);
    });

  const watch = watchSection({
    url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}`,
    sectionId: SECTION_ID,
    getToken: async ({ reason }) => `jwt-${reason}`,
    WebSocket,
    random: () => 0, // reconnect without waiting: the test needs no timers of its own
  });
  const statusIs = (status: Status) =>
    new Promise<void>((resolve) => {
      const stop = watch.onStatus((event) => {
        if (event.status === status) {
          stop();
          resolve();
        }
      });
    });
  const changeOf = (predicate: (change: Change) => boolean) =>
    new Promise<void>((resolve) => {
      const stop = watch.subscribe((_floor, change) => {
        if (predicate(change)) {
          stop();
          resolve();
        }
      });
    });

  try {
    const first = await nextConnection();
    assert.equal(first.request.url, `/ws/restaurant/${SECTION_ID}?resume=`);
    assert.deepEqual(offered(first.request), ["bearer", "jwt-connect"]);
    assert.equal(first.socket.protocol, "bearer");

    const live = statusIs("live");
    first.socket.send(JSON.stringify(snapshot([table("t1", at(10))])));
    await live;
    const updated = changeOf((change) => change.kind === "event" && change.applied);
    first.socket.send(JSON.stringify({ event: "table.updated", payload: table("t1", at(20), { capacity: 8 }) }));
    first.socket.send(JSON.stringify({ event: "section.position", payload: { token: "pos-1" } }));
    await updated;
    assert.equal(watch.floor.tables.get("t1")?.capacity, 8);

    first.socket.close(4401, "token expired");
    const second = await nextConnection();
    assert.equal(second.request.url, `/ws/restaurant/${SECTION_ID}?resume=pos-1`);
    assert.deepEqual(offered(second.request), ["bearer", "jwt-rejected"]);
    const resumed = statusIs("live");
    second.socket.send(JSON.stringify({ event: "section.resumed", payload: { replayed: 0 } }));
    await resumed;
    assert.equal(watch.floor.tables.get("t1")?.capacity, 8, "the floor was kept");

    const [code] = (await Promise.all([once(second.socket, "close"), Promise.resolve(watch.close())]))[0] as [number];
    assert.equal(code, 1000);
    assert.equal(watch.status, "closed");
  } finally {
    watch.close();
    for (const client of server.clients) client.terminate();
    server.close();
  }
});
