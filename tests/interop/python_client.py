"""A MesaYa client on Python's `websockets` with its defaults (it offers permessage-deflate), for
tests/compression.rs. Prints one JSON line per step: the negotiated extensions and the snapshot,
the first event after the snapshot, the pong to a ping it sends compressed (websockets compresses
every message once the extension is negotiated).

usage: python_client.py <ws url> [offer|no-offer]
"""
import asyncio
import json
import sys

from websockets.asyncio.client import connect


def say(**fields):
    print(json.dumps(fields), flush=True)


async def main(url, offer):
    compression = "deflate" if offer == "offer" else None
    async with connect(url, compression=compression, max_size=None, proxy=None) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        snapshot = json.loads(await ws.recv())
        say(step="snapshot", extensions=extensions, event=snapshot["event"], tables=len(snapshot["payload"]["tables"]))
        event = json.loads(await ws.recv())
        say(step="event", event=event["event"], id=event["payload"]["id"])
        await ws.send(json.dumps({"event": "ping", "padding": "p" * 2000}))
        pong = json.loads(await ws.recv())
        say(step="pong", event=pong["event"])


asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "offer"))
