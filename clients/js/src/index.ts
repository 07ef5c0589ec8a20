// @mesaya/realtime: a live floor plan of one MesaYa section from the
// mesaya-realtime gateway.

import { SectionWatch, type Watch, type WatchOptions } from "./connection.js";

/** Watches a section: connects at once, and keeps `floor` current until `close()` or a final close. */
export function watchSection(options: WatchOptions): Watch {
  const watch = new SectionWatch(options);
  // Methods that work detached (`useSyncExternalStore(watch.subscribe, ...)`, `const { close } = watch`).
  return {
    get floor() {
      return watch.floor;
    },
    get status() {
      return watch.status;
    },
    subscribe: (listener) => watch.subscribe(listener),
    onStatus: (listener) => watch.onStatus(listener),
    onAuth: (listener) => watch.onAuth(listener),
    close: () => watch.close(),
  };
}

export type {
  AuthEvent,
  Clock,
  Status,
  StatusEvent,
  TokenRequest,
  Watch,
  WatchOptions,
  WebSocketConstructor,
  WebSocketLike,
} from "./connection.js";
export type { SyncStorage } from "./persist.js";
export { FloorStore, REMEMBERED_DELETES, isFloorMessage } from "./store.js";
export type { Change, EventChange, Floor, IgnoredReason, StoredFloor } from "./store.js";
export type * from "./types.js";
