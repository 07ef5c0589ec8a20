// One watched section: the socket, its reconnects, resume, token refresh
// and heartbeat, feeding the floor store. Time, timers and randomness come
// from options so that tests drive every path with a fake clock.

import { forgetFloor, loadFloor, saveFloor, type SyncStorage } from "./persist.js";
import { BACKOFF_RESET_AFTER_MS, backoffDelay, decideOnClose, spreadDelay } from "./policy.js";
import { FloorStore, isFloorMessage, type Change, type Floor } from "./store.js";
import type { ClientMessage } from "./types.js";

/**
 * The part of the WebSocket interface the library uses; the browser's
 * `WebSocket` and the `ws` package's both fit. (Handler parameters are `any`
 * so that either's event classes are accepted.)
 */
export interface WebSocketLike {
  readonly readyState: number;
  onmessage: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  /** `ws` only: drops the connection without a closing handshake. */
  terminate?(): void;
}

export type WebSocketConstructor = new (url: string, protocols: string[]) => WebSocketLike;

/** Time and timers; `setTimeout` handles are opaque. */
export interface Clock {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** Why `getToken` is called. */
export interface TokenRequest {
  /**
   * `connect`: before a connection attempt; `rejected`: before an attempt
   * after the gateway refused the token (4401, or a failed refresh), so a
   * cached token should not be given again; `expiring`: for an in-band
   * refresh, the connection's token expires soon.
   */
  reason: "connect" | "rejected" | "expiring";
}

export interface WatchOptions {
  /** The gateway's base URL, e.g. `wss://realtime.example`. */
  url: string;
  sectionId: string;
  /** Called before every connection attempt and on `auth.expiring`; must settle. */
  getToken: (request: TokenRequest) => string | Promise<string>;
  /** Resume with `section.position` tokens instead of a new snapshot after a reconnect (default true). */
  resume?: boolean;
  /** Default `globalThis.WebSocket` (Node 20 has none: pass the `ws` package's). */
  WebSocket?: WebSocketConstructor;
  /** Keeps the floor and its resume token across reloads (used only with `resume`). */
  storage?: SyncStorage;
  /** Silence (ms) after which a `ping` is sent (default 30 000; 0 turns the heartbeat off). */
  heartbeat?: number;
  /** Silence (ms) after the ping after which the connection is dropped and made again (default 10 000). */
  heartbeatTimeout?: number;
  /** Time and timers (default: the platform's). For tests. */
  clock?: Clock;
  /** Uniform in [0, 1) (default Math.random). For tests. */
  random?: () => number;
}

export type Status = "connecting" | "live" | "reconnecting" | "closed";

export interface StatusEvent {
  /** `connecting` until the first snapshot; `live` once the floor is current; `reconnecting` while waiting for the next attempt; `closed` for good. */
  status: Status;
  /** The close code that caused this status (`reconnecting`, `closed`). */
  code?: number;
  reason?: string;
  /** True once, when the watch is over; nothing follows it. */
  final: boolean;
  /** `reconnecting`: ms until the next attempt. */
  retryIn?: number;
}

/**
 * The token's life on the open connection (§2.8), for a page that shows it:
 * `expiring` (the gateway's notice; the library is asking `getToken`),
 * `refreshed` (the gateway took the new token: `exp` is its expiry),
 * `refresh_failed` (with the gateway's `reason`; the library reconnects
 * through the 4401 path).
 */
export type AuthEvent =
  | { kind: "expiring"; exp: number | undefined }
  | { kind: "refreshed"; exp: number | undefined }
  | { kind: "refresh_failed"; reason: string };

export interface Watch {
  /** The current floor: a new object after every applied change. */
  readonly floor: Floor;
  readonly status: Status;
  /** Called after every floor frame (snapshot, resumed, entity event) with the floor after it; returns an unsubscribe function. */
  subscribe(listener: (floor: Floor, change: Change) => void): () => void;
  onStatus(listener: (event: StatusEvent) => void): () => void;
  /** Called on each in-band refresh step; the library does the refresh itself, this only tells. */
  onAuth(listener: (event: AuthEvent) => void): () => void;
  /** Ends the watch: reports `closed` (code 1000, final) once and leaves no timer or socket behind. */
  close(): void;
}

const OPEN = 1;
const DEFAULT_HEARTBEAT_MS = 30_000;
const DEFAULT_HEARTBEAT_TIMEOUT_MS = 10_000;

interface Platform {
  WebSocket?: WebSocketConstructor;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  queueMicrotask(callback: () => void): void;
}

// The library compiles against the ES library only (no DOM, no Node types);
// these are what it needs from either platform.
const platform = globalThis as unknown as Platform;

const platformClock: Clock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => platform.setTimeout(callback, ms),
  clearTimeout: (handle) => platform.clearTimeout(handle),
};

const noop = (): void => {};

export class SectionWatch implements Watch {
  readonly #url: string;
  readonly #sectionId: string;
  readonly #getToken: WatchOptions["getToken"];
  readonly #resume: boolean;
  readonly #WebSocket: WebSocketConstructor;
  readonly #storage: SyncStorage | undefined;
  readonly #heartbeat: number;
  readonly #heartbeatTimeout: number;
  readonly #clock: Clock;
  readonly #random: () => number;

  readonly #floorListeners = new Set<(floor: Floor, change: Change) => void>();
  readonly #statusListeners = new Set<(event: StatusEvent) => void>();
  readonly #authListeners = new Set<(event: AuthEvent) => void>();

  #store: FloorStore;
  /** The latest position token; only ever set while the store holds the floor it belongs to. */
  #resumeToken: string | undefined;
  #status: Status = "connecting";
  #final = false;

  #socket: WebSocketLike | undefined;
  /** Bumped by every attempt and by the end: a late `getToken` answer for an older one is dropped. */
  #attempt = 0;
  #failures = 0;
  #liveSince: number | undefined;
  /** The gateway refused the token: `getToken` is told so until a connection goes live. */
  #tokenRejected = false;

  #reconnectTimer: unknown;
  #idleTimer: unknown;
  #pongTimer: unknown;
  #lastHeard = 0;

  constructor(options: WatchOptions) {
    const WebSocket = options.WebSocket ?? platform.WebSocket;
    if (typeof options.url !== "string" || options.url === "") throw new TypeError("watchSection: `url` is required");
    if (typeof options.sectionId !== "string" || options.sectionId === "") {
      throw new TypeError("watchSection: `sectionId` is required");
    }
    if (typeof options.getToken !== "function") throw new TypeError("watchSection: `getToken` is required");
    if (typeof WebSocket !== "function") {
      throw new TypeError("watchSection: no WebSocket constructor (pass `WebSocket`, e.g. the `ws` package's)");
    }
    this.#url = options.url.replace(/\/+$/, "");
    this.#sectionId = options.sectionId;
    this.#getToken = options.getToken;
    this.#resume = options.resume ?? true;
    this.#WebSocket = WebSocket;
    this.#storage = this.#resume ? options.storage : undefined;
    this.#heartbeat = options.heartbeat ?? DEFAULT_HEARTBEAT_MS;
    this.#heartbeatTimeout = options.heartbeatTimeout ?? DEFAULT_HEARTBEAT_TIMEOUT_MS;
    this.#clock = options.clock ?? platformClock;
    this.#random = options.random ?? Math.random;

    const stored = this.#storage && loadFloor(this.#storage, this.#sectionId);
    this.#store = stored?.store ?? new FloorStore();
    this.#resumeToken = stored?.token;
    void this.#connect();
  }

  get floor(): Floor {
    return this.#store.floor;
  }

  get status(): Status {
    return this.#status;
  }

  subscribe(listener: (floor: Floor, change: Change) => void): () => void {
    this.#floorListeners.add(listener);
    return () => void this.#floorListeners.delete(listener);
  }

  onStatus(listener: (event: StatusEvent) => void): () => void {
    this.#statusListeners.add(listener);
    return () => void this.#statusListeners.delete(listener);
  }

  onAuth(listener: (event: AuthEvent) => void): () => void {
    this.#authListeners.add(listener);
    return () => void this.#authListeners.delete(listener);
  }

  close(): void {
    // Kept in storage: a reload after the page closed its watch may resume.
    this.#finish(1000, "closed by the client", { forget: false });
  }

  async #connect(): Promise<void> {
    const attempt = ++this.#attempt;
    let token: unknown;
    try {
      token = await this.#getToken({ reason: this.#tokenRejected ? "rejected" : "connect" });
    } catch (error) {
      if (attempt === this.#attempt) this.#retry(undefined, `getToken failed: ${describe(error)}`, "backoff");
      return;
    }
    if (attempt !== this.#attempt) return; // closed, or superseded, while the token was fetched
    if (typeof token !== "string" || token === "") {
      this.#retry(undefined, "getToken gave no token", "backoff");
      return;
    }
    let socket: WebSocketLike;
    try {
      // The token travels as a subprotocol, never in the URL (which ends up in proxy logs).
      socket = new this.#WebSocket(this.#connectUrl(), ["bearer", token]);
    } catch (error) {
      this.#finish(undefined, `cannot open a WebSocket: ${describe(error)}`, { forget: false });
      return;
    }
    this.#socket = socket;
    socket.onmessage = (event: { data: unknown }) => this.#onFrame(event.data);
    socket.onclose = (event: { code: number; reason: string }) => {
      this.#detach();
      this.#onClose(event.code, event.reason);
    };
    // Every error is followed by a close event, whose code decides.
    socket.onerror = noop;
    // The heartbeat runs from the start, so that an attempt that never opens
    // (a black-holed connect) is given up too.
    this.#lastHeard = this.#clock.now();
    this.#armIdle();
  }

  #connectUrl(): string {
    const base = `${this.#url}/ws/restaurant/${encodeURIComponent(this.#sectionId)}`;
    // `?resume=` (empty) opts in to positions even when there is nothing to resume.
    return this.#resume ? `${base}?resume=${encodeURIComponent(this.#resumeToken ?? "")}` : base;
  }

  #onFrame(data: unknown): void {
    this.#heard();
    if (typeof data !== "string") return; // the gateway sends text frames only
    let message: unknown;
    try {
      message = JSON.parse(data);
    } catch {
      return;
    }
    if (typeof message !== "object" || message === null) return;
    const frame = message as { event: unknown; payload?: Record<string, unknown> };
    switch (frame.event) {
      case "section.position":
        if (typeof frame.payload?.token === "string") this.#keepPosition(frame.payload.token);
        return;
      case "auth.expiring":
        this.#emitAuth({ kind: "expiring", exp: expiry(frame.payload) });
        void this.#refresh();
        return;
      case "auth.refreshed":
        this.#emitAuth({ kind: "refreshed", exp: expiry(frame.payload) });
        return;
      case "auth.refresh_failed": {
        // The old token still works until its exp, but a token the gateway
        // refuses now will be refused at the next connect too: reconnect at
        // once through the 4401 path, which asks getToken for a new one.
        const reason = String(frame.payload?.reason);
        this.#emitAuth({ kind: "refresh_failed", reason });
        this.#drop(4401, `token refresh failed: ${reason}`);
        return;
      }
    }
    // pong, and events this version does not know change nothing.
    if (!isFloorMessage(frame)) return;
    const change = this.#store.apply(frame);
    if (change.kind === "snapshot") this.#resumeToken = undefined; // a new chain: positions follow
    if (change.kind !== "event") this.#goLive();
    if (this.#final) return; // a status listener closed the watch
    this.#emitChange(change);
    if (this.#store.ended && !this.#final) {
      // section.deleted / restaurant.deleted: the gateway closes with 1000 next.
      this.#finish(1000, change.kind === "event" ? change.event : "ended", { forget: true });
    }
  }

  #keepPosition(token: string): void {
    this.#resumeToken = token;
    if (this.#storage) saveFloor(this.#storage, this.#sectionId, token, this.#store);
  }

  async #refresh(): Promise<void> {
    const socket = this.#socket;
    let token: unknown;
    try {
      token = await this.#getToken({ reason: "expiring" });
    } catch {
      // Nothing to send: the connection lives until its token expires, then
      // the 4401 close asks for a token again.
      return;
    }
    if (socket !== this.#socket || typeof token !== "string" || token === "") return;
    this.#send({ event: "auth.refresh", payload: { token } });
  }

  #goLive(): void {
    this.#liveSince = this.#clock.now();
    this.#tokenRejected = false;
    if (this.#status !== "live") this.#setStatus({ status: "live", final: false });
  }

  #onClose(code: number, reason: string): void {
    const decision = decideOnClose(code);
    if (decision.kind === "final") {
      this.#finish(code, reason, { forget: true });
      return;
    }
    if (decision.tokenRejected) this.#tokenRejected = true;
    this.#retry(code, reason, decision.wait);
  }

  #retry(code: number | undefined, reason: string, wait: "backoff" | "spread"): void {
    const now = this.#clock.now();
    if (this.#liveSince !== undefined && now - this.#liveSince >= BACKOFF_RESET_AFTER_MS) this.#failures = 0;
    this.#liveSince = undefined;
    const delay = wait === "spread" ? spreadDelay(this.#random) : backoffDelay(this.#failures++, this.#random);
    this.#reconnectTimer = this.#clock.setTimeout(() => {
      this.#reconnectTimer = undefined;
      void this.#connect();
    }, delay);
    this.#setStatus({
      status: "reconnecting",
      ...(code !== undefined && { code }),
      reason,
      final: false,
      retryIn: delay,
    });
  }

  /** Gives up on the current socket (heartbeat timeout, refused refresh) as if it had closed with `code`. */
  #drop(code: number, reason: string): void {
    // No closing handshake: the socket is dead, or about to be replaced.
    this.#closeSocket({ graceful: false });
    this.#onClose(code, reason);
  }

  #finish(code: number | undefined, reason: string, { forget }: { forget: boolean }): void {
    if (this.#final) return;
    this.#final = true;
    this.#attempt++;
    this.#closeSocket({ graceful: true });
    if (this.#reconnectTimer !== undefined) this.#clock.clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    // Nothing left to resume: the next page load starts with a snapshot.
    if (forget && this.#storage) forgetFloor(this.#storage, this.#sectionId);
    this.#setStatus({ status: "closed", ...(code !== undefined && { code }), reason, final: true });
  }

  #closeSocket({ graceful }: { graceful: boolean }): void {
    const socket = this.#socket;
    if (!socket) return;
    this.#detach();
    try {
      if (!graceful && socket.terminate) socket.terminate();
      else socket.close(1000);
    } catch {
      // Already closed.
    }
  }

  /** Forgets the current socket: its handlers become no-ops (an `ws` socket without an error handler throws). */
  #detach(): void {
    const socket = this.#socket;
    if (socket) socket.onmessage = socket.onclose = socket.onerror = noop;
    this.#socket = undefined;
    this.#clearHeartbeat();
  }

  #send(message: ClientMessage): void {
    if (this.#socket?.readyState === OPEN) this.#socket.send(JSON.stringify(message));
  }

  // Heartbeat: one timer while frames flow. It fires `heartbeat` ms after the
  // last frame (re-arming itself when frames came meanwhile, rather than being
  // reset on every frame), sends a ping, then waits `heartbeatTimeout` for any
  // frame before dropping the socket.

  #heard(): void {
    this.#lastHeard = this.#clock.now();
    if (this.#pongTimer !== undefined) {
      this.#clock.clearTimeout(this.#pongTimer);
      this.#pongTimer = undefined;
      this.#armIdle();
    }
  }

  #armIdle(): void {
    if (this.#heartbeat <= 0) return;
    const wait = this.#heartbeat - (this.#clock.now() - this.#lastHeard);
    this.#idleTimer = this.#clock.setTimeout(() => this.#onIdle(), Math.max(0, wait));
  }

  #onIdle(): void {
    this.#idleTimer = undefined;
    if (this.#clock.now() - this.#lastHeard < this.#heartbeat) {
      this.#armIdle();
      return;
    }
    this.#send({ event: "ping" });
    this.#pongTimer = this.#clock.setTimeout(() => {
      this.#pongTimer = undefined;
      this.#drop(1006, "heartbeat timeout");
    }, this.#heartbeatTimeout);
  }

  #clearHeartbeat(): void {
    if (this.#idleTimer !== undefined) this.#clock.clearTimeout(this.#idleTimer);
    if (this.#pongTimer !== undefined) this.#clock.clearTimeout(this.#pongTimer);
    this.#idleTimer = this.#pongTimer = undefined;
  }

  #setStatus(event: StatusEvent): void {
    this.#status = event.status;
    for (const listener of [...this.#statusListeners]) call(listener, event);
  }

  #emitChange(change: Change): void {
    const floor = this.#store.floor;
    for (const listener of [...this.#floorListeners]) call(listener, floor, change);
  }

  #emitAuth(event: AuthEvent): void {
    for (const listener of [...this.#authListeners]) call(listener, event);
  }
}

/** The `exp` (unix seconds) of an `auth.expiring` / `auth.refreshed` payload. */
function expiry(payload: Record<string, unknown> | undefined): number | undefined {
  return typeof payload?.exp === "number" ? payload.exp : undefined;
}

/** A listener that throws must not break the connection: its error is rethrown on its own. */
function call<A extends unknown[]>(listener: (...args: A) => void, ...args: A): void {
  try {
    listener(...args);
  } catch (error) {
    platform.queueMicrotask(() => {
      throw error;
    });
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
