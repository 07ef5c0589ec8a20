// The floor and its resume token, kept together across page reloads.
//
// They are one value under one key on purpose: a token resumes after the
// frames it covers, so it is only usable by a client that holds the floor
// those frames built. Stored apart, a reload could pair a token with another
// floor (or none) and resume onto a state that never received the snapshot.

import { FloorStore } from "./store.js";

/** Synchronous string storage, as `sessionStorage` (wrap it: `{ get: k => s.getItem(k), set: (k, v) => s.setItem(k, v) }`). */
export interface SyncStorage {
  get(key: string): string | null | undefined;
  set(key: string, value: string): void;
}

const VERSION = 1;

export function storageKey(sectionId: string): string {
  return `mesaya-realtime:${sectionId}`;
}

/** The stored floor and token of a section, or undefined when there is none usable. */
export function loadFloor(storage: SyncStorage, sectionId: string): { store: FloorStore; token: string } | undefined {
  let data: unknown;
  try {
    const text = storage.get(storageKey(sectionId));
    if (!text) return undefined;
    data = JSON.parse(text);
  } catch {
    return undefined; // unreadable storage (privacy mode) or a corrupt entry: start with a snapshot
  }
  if (typeof data !== "object" || data === null) return undefined;
  const { v, token, floor } = data as { v?: unknown; token?: unknown; floor?: unknown };
  if (v !== VERSION || typeof token !== "string" || token === "") return undefined;
  const store = FloorStore.restore(floor);
  return store && { store, token };
}

export function saveFloor(storage: SyncStorage, sectionId: string, token: string, store: FloorStore): void {
  try {
    storage.set(storageKey(sectionId), JSON.stringify({ v: VERSION, token, floor: store }));
  } catch {
    // Quota exceeded or storage disabled: resuming after a reload is a
    // nicety, the live floor does not depend on it.
  }
}

/** Forgets a section whose watch ended for good (an empty value reads as nothing stored). */
export function forgetFloor(storage: SyncStorage, sectionId: string): void {
  try {
    storage.set(storageKey(sectionId), "");
  } catch {
    // As in saveFloor.
  }
}
