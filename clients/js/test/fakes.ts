// Test doubles: a clock whose time moves only when told, and a socket
// driven by the test playing the gateway.

import type { Clock, WebSocketLike } from "../src/connection.js";
import type { SectionSnapshot, Table } from "../src/types.js";

export class FakeClock implements Clock {
  #now = 0;
  #nextId = 1;
  readonly #timers = new Map<number, { at: number; callback: () => void }>();

  now(): number {
    return this.#now;
  }

  setTimeout(callback: () => void, ms: number): unknown {
    const id = this.#nextId++;
    this.#timers.set(id, { at: this.#now + Math.max(0, ms), callback });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.#timers.delete(handle as number);
  }

  /** Timers still scheduled. */
  get pending(): number {
    return this.#timers.size;
  }

  /** Moves time forward, firing due timers in order (those they schedule included). */
  advance(ms: number): void {
    const end = this.#now + ms;
    for (;;) {
      let dueId: number | undefined;
      let due: { at: number; callback: () => void } | undefined;
      for (const [id, timer] of this.#timers) {
        if (timer.at <= end && (!due || timer.at < due.at)) {
          dueId = id;
          due = timer;
        }
      }
      if (!due || dueId === undefined) break;
      this.#timers.delete(dueId);
      this.#now = due.at;
      due.callback();
    }
    this.#now = end;
  }
}

export class FakeSocket implements WebSocketLike {
  readyState = 0;
  readonly sent: unknown[] = [];
  /** How the client ended this socket: a close code, or "terminated". */
  endedBy: number | "terminated" | undefined;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;

  constructor(
    readonly url: string,
    readonly protocols: string[],
  ) {}

  // ---- what the test, as the gateway, does

  open(): void {
    this.readyState = 1;
  }

  receive(message: unknown): void {
    this.onmessage?.({ data: typeof message === "string" ? message : JSON.stringify(message) });
  }

  /** The server closes (or the network drops, with 1006). */
  serverClose(code: number, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }

  // ---- what the client does

  send(data: string): void {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(data));
  }

  close(code?: number): void {
    this.readyState = 3;
    this.endedBy = code ?? 1005;
  }

  terminate(): void {
    this.readyState = 3;
    this.endedBy = "terminated";
  }
}

/** A WebSocket constructor that records every socket it makes. */
export function socketFactory(): { WebSocket: new (url: string, protocols: string[]) => FakeSocket; sockets: FakeSocket[] } {
  const sockets: FakeSocket[] = [];
  class RecordedSocket extends FakeSocket {
    constructor(url: string, protocols: string[]) {
      super(url, protocols);
      sockets.push(this);
    }
  }
  return { WebSocket: RecordedSocket, sockets };
}

/** Lets pending promise callbacks (an async getToken) run. */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

// ---- entities

export const SECTION_ID = "5b0c7c1e-2f0a-4b7e-9a51-0d3c2b7e8f11";
export const RESTAURANT_ID = "d290f1ee-6c54-4b01-90e6-d701748f0851";

/** A moment `seconds` after a fixed origin, as the API stamps it. */
export function at(seconds: number): string {
  return new Date(Date.UTC(2026, 0, 10, 15, 0, 0) + seconds * 1000).toISOString();
}

export function table(id: string, updatedAt: string, extra: Partial<Table> = {}): Table {
  return {
    id,
    sectionId: SECTION_ID,
    number: 1,
    capacity: 4,
    posX: 10,
    posY: 10,
    width: 2,
    height: 2,
    tableImageId: "0f7d2c8e-1111-4a2b-9c3d-4e5f60718293",
    chairImageId: "6a1b2c3d-2222-4e5f-8a9b-0c1d2e3f4a5b",
    status: "AVAILABLE",
    isAvailable: true,
    createdAt: at(0),
    updatedAt,
    ...extra,
  };
}

export function graphicObject(id: string, updatedAt: string, posX = 40) {
  return { id, posX, posY: 5, width: 10, height: 2, imageId: "b4c5d6e7-4444-4a8b-9c0d-1e2f3a4b5c6d", createdAt: at(0), updatedAt };
}

export function link(id: string, objectId: string, updatedAt: string, object?: ReturnType<typeof graphicObject>) {
  return { id, sectionId: SECTION_ID, objectId, createdAt: at(0), updatedAt, ...(object && { object }) };
}

/** A reservation as a public viewer receives it: no userId, userName, userEmail. */
export function reservation(id: string, tableId: string, updatedAt: string, status = "PENDING") {
  return {
    id,
    restaurantId: RESTAURANT_ID,
    tableId,
    reservationDate: "2026-01-15",
    reservationTime: "2026-01-15T19:30:00.000Z",
    numberOfGuests: 4,
    status,
    createdAt: at(0),
    updatedAt,
  } as const;
}

export function restaurant(updatedAt: string, name = "La Mesa") {
  return {
    id: RESTAURANT_ID,
    name,
    description: null,
    location: "Av. Amazonas N24-03",
    openTime: "12:00",
    closeTime: "23:00",
    daysOpen: ["FRIDAY", "SATURDAY"],
    totalCapacity: 80,
    imageId: null,
    status: "ACTIVE",
    active: true,
    createdAt: at(0),
    updatedAt,
  } as const;
}

export function section(updatedAt: string, name = "Terraza") {
  return {
    id: SECTION_ID,
    restaurantId: RESTAURANT_ID,
    name,
    description: null,
    width: 120,
    height: 80,
    posX: 0,
    posY: 0,
    status: "ACTIVE",
    layoutMetadata: { layoutId: null, orientation: "LANDSCAPE", zIndex: 0, notes: null },
    createdAt: updatedAt,
    updatedAt,
  } as const;
}

export function snapshot(
  tables: Table[],
  objects: ReturnType<typeof link>[] = [],
  updatedAt = at(1000),
): { event: "section.snapshot"; payload: SectionSnapshot } {
  return { event: "section.snapshot", payload: { ...section(updatedAt), tables, objects } };
}
