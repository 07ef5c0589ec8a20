// A MesaYa client on Node's `ws` with its defaults (it offers permessage-deflate), for
// tests/compression.rs. Prints one JSON line per step: the negotiated extensions and the snapshot,
// the first event after the snapshot, the pong to a ping it sends compressed (ws compresses
// messages of 1024 bytes and more once the extension is negotiated).
//
// usage: NODE_PATH=clients/js/node_modules node node_client.cjs <ws url> [offer|no-offer]
const WebSocket = require("ws");

const [url, offer = "offer"] = process.argv.slice(2);
const say = (fields) => process.stdout.write(JSON.stringify(fields) + "\n");
const ws = new WebSocket(url, { perMessageDeflate: offer === "offer" });
let extensions = null;
ws.on("upgrade", (response) => {
  extensions = response.headers["sec-websocket-extensions"] ?? null;
});
const steps = [
  (frame) => say({ step: "snapshot", extensions, event: frame.event, tables: frame.payload.tables.length }),
  (frame) => {
    say({ step: "event", event: frame.event, id: frame.payload.id });
    ws.send(JSON.stringify({ event: "ping", padding: "p".repeat(2000) }));
  },
  (frame) => {
    say({ step: "pong", event: frame.event });
    ws.close(1000);
  },
];
ws.on("message", (data) => steps.shift()(JSON.parse(data.toString())));
ws.on("error", (error) => {
  console.error(error);
  process.exit(1);
});
