// The floor store: a section's snapshot with every later event applied on
// top. Pure (no I/O, no clock), so it can be tested and benchmarked alone.
//
// Why events are compared at all: the API commits before it emits, so an
// event often arrives after a snapshot that already shows it, and a resume
// after an abrupt drop replays frames the client already applied. Tables,
// objects, links, reservations and restaurants carry stored `updatedAt`
// stamps, so a copy not newer than the one held is a duplicate or stale.
// Sections do not (the API stamps them at every read): they are applied in
// the order they come, never compared.

import type {
  EntityEvent,
  EntityEventName,
  EntityKind,
  GraphicObject,
  Reservation,
  Restaurant,
  RestaurantAction,
  ResumedMessage,
  Section,
  SectionObject,
  SectionSnapshot,
  SnapshotMessage,
  Table,
} from "./types.js";

/** A section's live state. A new object after every applied change; never mutated. */
export interface Floor {
  /** The section as last received, without `tables`/`objects` (see the maps); undefined before the first snapshot. */
  readonly section: Section | undefined;
  /** From restaurant events only: undefined until one arrives. */
  readonly restaurant: Restaurant | undefined;
  /** By table id. */
  readonly tables: ReadonlyMap<string, Table>;
  /** By link id: each section-object link with its `object` key when the object is known. */
  readonly objects: ReadonlyMap<string, SectionObject>;
  /** By reservation id; the reservations of a table leave with it. */
  readonly reservations: ReadonlyMap<string, Reservation>;
}

/**
 * Why an event changed nothing:
 * - `stale`: the floor holds a copy at least as new (a duplicate, or an event older than the snapshot);
 * - `deleted`: not newer than a delete the store saw (a late update cannot bring an entity back);
 * - `absent`: nothing on this floor it applies to (a delete of what is not held, an object no link holds);
 * - `ended`: the section or its restaurant was deleted;
 * - `invalid`: the payload has no string `id`.
 */
export type IgnoredReason = "stale" | "deleted" | "absent" | "ended" | "invalid";

/** What a frame did to the floor; given to `subscribe` listeners with the floor after it. */
export type Change =
  /** A snapshot replaced the floor (reservations of the tables it still has are kept). */
  | { kind: "snapshot" }
  /** A resume succeeded: the floor is kept and the `replayed` missed events follow. */
  | { kind: "resumed"; replayed: number }
  | EventChange;

export interface EventChange {
  kind: "event";
  event: EntityEventName;
  entity: EntityKind;
  action: RestaurantAction;
  /** The entity's id (empty when the payload has none). */
  id: string;
  /** True when the floor changed; `section.deleted` and `restaurant.deleted` count as applied. */
  applied: boolean;
  /** Set when `applied` is false. */
  ignored?: IgnoredReason;
}

/** The store's state as JSON, for `storage`. */
export interface StoredFloor {
  section?: Section;
  restaurant?: Restaurant;
  tables: Table[];
  objects: SectionObject[];
  reservations: Reservation[];
  /** Remembered deletes: `[kind:id, updatedAt in ms]`, oldest first. */
  deleted: [string, number][];
}

const FLOOR_EVENTS: ReadonlySet<string> = new Set([
  "section.snapshot",
  "section.resumed",
  "restaurant.status_changed",
  ...["section", "table", "object", "section-object", "reservation", "restaurant"].flatMap((entity) =>
    ["created", "updated", "deleted"].map((action) => `${entity}.${action}`),
  ),
]);

/** Whether a message is one the store applies (the rest are protocol messages, or unknown). */
export function isFloorMessage(message: { event: unknown }): message is SnapshotMessage | ResumedMessage | EntityEvent {
  return typeof message.event === "string" && FLOOR_EVENTS.has(message.event);
}

/** How many deletes the store remembers (the newest are kept). */
export const REMEMBERED_DELETES = 10_000;

const EMPTY: Floor = {
  section: undefined,
  restaurant: undefined,
  tables: new Map(),
  objects: new Map(),
  reservations: new Map(),
};

interface Stamped {
  id: string;
  updatedAt?: string;
}

export class FloorStore {
  #floor: Floor = EMPTY;
  #ended = false;
  /** `kind:id` → the deleted copy's `updatedAt` in ms; Map order is the order deletes were seen. */
  readonly #deleted = new Map<string, number>();
  readonly #deletedLimit: number;

  constructor(options: { rememberedDeletes?: number } = {}) {
    this.#deletedLimit = options.rememberedDeletes ?? REMEMBERED_DELETES;
  }

  get floor(): Floor {
    return this.#floor;
  }

  /** True once `section.deleted` or `restaurant.deleted` was applied: the watch is over. */
  get ended(): boolean {
    return this.#ended;
  }

  apply(message: SnapshotMessage | ResumedMessage | EntityEvent): Change {
    switch (message.event) {
      case "section.snapshot":
        this.#applySnapshot(message.payload);
        return { kind: "snapshot" };
      case "section.resumed":
        return { kind: "resumed", replayed: Number(message.payload?.replayed) || 0 };
      default:
        return this.#applyEvent(message);
    }
  }

  toJSON(): StoredFloor {
    const floor = this.#floor;
    return {
      ...(floor.section && { section: floor.section }),
      ...(floor.restaurant && { restaurant: floor.restaurant }),
      tables: [...floor.tables.values()],
      objects: [...floor.objects.values()],
      reservations: [...floor.reservations.values()],
      deleted: [...this.#deleted],
    };
  }

  /** A store holding what `toJSON` saved; undefined when `data` is not such a value. */
  static restore(data: unknown, options: { rememberedDeletes?: number } = {}): FloorStore | undefined {
    if (!isRecord(data) || !isRecord(data.section)) return undefined;
    const { tables, objects, reservations, deleted } = data;
    if (![tables, objects, reservations, deleted].every(Array.isArray)) return undefined;
    const store = new FloorStore(options);
    store.#floor = {
      section: data.section as unknown as Section,
      restaurant: isRecord(data.restaurant) ? (data.restaurant as unknown as Restaurant) : undefined,
      tables: byId(tables as unknown[]) as Map<string, Table>,
      objects: byId(objects as unknown[]) as Map<string, SectionObject>,
      reservations: byId(reservations as unknown[]) as Map<string, Reservation>,
    };
    for (const entry of deleted as unknown[]) {
      if (Array.isArray(entry) && typeof entry[0] === "string" && typeof entry[1] === "number") {
        store.#remember(entry[0], entry[1]);
      }
    }
    return store;
  }

  #applySnapshot(payload: SectionSnapshot | undefined): void {
    // The wire is not trusted to match the types: a body without arrays is an empty floor.
    const { tables, objects, ...section } = (payload ?? {}) as Partial<SectionSnapshot>;
    const nextTables = byId(Array.isArray(tables) ? tables : []) as Map<string, Table>;
    const nextObjects = byId(Array.isArray(objects) ? objects : []) as Map<string, SectionObject>;
    // Snapshots carry no reservations: keep those whose table is still on the floor.
    const reservations = new Map<string, Reservation>();
    for (const reservation of this.#floor.reservations.values()) {
      if (reservation.tableId !== undefined && nextTables.has(reservation.tableId)) {
        reservations.set(reservation.id, reservation);
      } else {
        this.#rememberDeleted("reservation", reservation);
      }
    }
    // What the snapshot holds is alive whatever deletes were seen before.
    for (const id of nextTables.keys()) this.#deleted.delete(key("table", id));
    for (const link of nextObjects.values()) {
      this.#deleted.delete(key("section-object", link.id));
      if (link.object) this.#deleted.delete(key("object", link.object.id));
    }
    this.#ended = false;
    this.#floor = {
      section: section as Section,
      restaurant: this.#floor.restaurant,
      tables: nextTables,
      objects: nextObjects,
      reservations,
    };
  }

  #applyEvent(message: EntityEvent): EventChange {
    const name = message.event;
    const dot = name.indexOf(".");
    const entity = name.slice(0, dot) as EntityKind;
    const action = name.slice(dot + 1) as RestaurantAction;
    const payload: unknown = message.payload;
    const id = isRecord(payload) && typeof payload.id === "string" ? payload.id : "";
    const ignored = this.#ended ? "ended" : id === "" ? "invalid" : this.#dispatch(message);
    return ignored === undefined
      ? { kind: "event", event: name, entity, action, id, applied: true }
      : { kind: "event", event: name, entity, action, id, applied: false, ignored };
  }

  /** Applies one entity event; returns why it was ignored, or undefined when applied. */
  #dispatch({ event, payload }: EntityEvent): IgnoredReason | undefined {
    const [entity, action] = event.split(".") as [EntityKind, RestaurantAction];
    const deleted = action === "deleted";
    switch (entity) {
      case "section":
        return this.#applySection(deleted, payload as Section);
      case "restaurant":
        return this.#applyRestaurant(deleted, payload as Restaurant);
      case "table":
        return this.#applyTable(deleted, payload as Table);
      case "reservation":
        return this.#applyReservation(deleted, payload as Reservation);
      case "section-object":
        return this.#applyLink(deleted, payload as SectionObject);
      case "object":
        return deleted ? this.#deleteObject(payload as GraphicObject) : this.#upsertObject(payload as GraphicObject);
    }
  }

  #applySection(deleted: boolean, section: Section): IgnoredReason | undefined {
    if (this.#floor.section && this.#floor.section.id !== section.id) return "absent";
    if (deleted) {
      this.#ended = true;
      return undefined;
    }
    const { tables: _tables, ...rest } = section;
    this.#floor = { ...this.#floor, section: rest };
    return undefined;
  }

  #applyRestaurant(deleted: boolean, restaurant: Restaurant): IgnoredReason | undefined {
    const section = this.#floor.section;
    if (section && section.restaurantId !== restaurant.id) return "absent";
    if (deleted) {
      this.#ended = true;
      return undefined;
    }
    const held = this.#floor.restaurant;
    if (held && notNewer(restaurant, held)) return "stale";
    this.#floor = { ...this.#floor, restaurant };
    return undefined;
  }

  #applyTable(deleted: boolean, table: Table): IgnoredReason | undefined {
    const tables = this.#floor.tables;
    const held = tables.get(table.id);
    if (!deleted) {
      const ignored = this.#admit("table", held, table);
      if (ignored) return ignored;
      this.#floor = { ...this.#floor, tables: withEntry(tables, table.id, table) };
      return undefined;
    }
    // A table moved to another section arrives here as `table.deleted` too.
    const ignored = this.#admitDelete("table", held, table);
    if (ignored) return ignored;
    let reservations = this.#floor.reservations;
    const leaving = [...reservations.values()].filter((reservation) => reservation.tableId === table.id);
    if (leaving.length > 0) {
      const next = new Map(reservations);
      for (const reservation of leaving) {
        next.delete(reservation.id);
        this.#rememberDeleted("reservation", reservation);
      }
      reservations = next;
    }
    this.#floor = { ...this.#floor, tables: withoutEntry(tables, table.id), reservations };
    return undefined;
  }

  #applyReservation(deleted: boolean, reservation: Reservation): IgnoredReason | undefined {
    // Applied whatever its table: the gateway routes a reservation to the
    // section of its table, whose event may reach this floor after it. It
    // leaves with its table (table.deleted, or a snapshot without the table).
    const reservations = this.#floor.reservations;
    const held = reservations.get(reservation.id);
    const ignored = deleted
      ? this.#admitDelete("reservation", held, reservation)
      : this.#admit("reservation", held, reservation);
    if (ignored) return ignored;
    this.#floor = {
      ...this.#floor,
      reservations: deleted
        ? withoutEntry(reservations, reservation.id)
        : withEntry(reservations, reservation.id, reservation),
    };
    return undefined;
  }

  #applyLink(deleted: boolean, link: SectionObject): IgnoredReason | undefined {
    const links = this.#floor.objects;
    const held = links.get(link.id);
    if (deleted) {
      const ignored = this.#admitDelete("section-object", held, link);
      if (ignored) return ignored;
      this.#floor = { ...this.#floor, objects: withoutEntry(links, link.id) };
      return undefined;
    }
    const ignored = this.#admit("section-object", held, link);
    if (ignored) return ignored;
    // The gateway adds the object only when it knows it: a copy this link
    // already had for the same object stays, the newer of the two wins, and
    // a copy not newer than the object's delete is dropped.
    let object = newest(link.object, held?.objectId === link.objectId ? held.object : undefined);
    if (object && this.#deletedAfter("object", object)) object = undefined;
    const { object: _sent, ...bare } = link;
    if (object) this.#deleted.delete(key("object", object.id));
    this.#floor = { ...this.#floor, objects: withEntry(links, link.id, object ? { ...bare, object } : bare) };
    return undefined;
  }

  #upsertObject(object: GraphicObject): IgnoredReason | undefined {
    const links = this.#floor.objects;
    const blocked = this.#deletedAfter("object", object);
    let next: Map<string, SectionObject> | undefined;
    let ignored: IgnoredReason = "absent";
    for (const link of links.values()) {
      if (link.objectId !== object.id) continue;
      if (link.object ? notNewer(object, link.object) : blocked) {
        ignored = link.object ? "stale" : "deleted";
        continue;
      }
      (next ??= new Map(links)).set(link.id, { ...link, object });
    }
    if (!next) return ignored;
    this.#deleted.delete(key("object", object.id));
    this.#floor = { ...this.#floor, objects: next };
    return undefined;
  }

  #deleteObject(object: GraphicObject): IgnoredReason | undefined {
    const links = this.#floor.objects;
    this.#rememberDeleted("object", object);
    let next: Map<string, SectionObject> | undefined;
    let ignored: IgnoredReason = "absent";
    for (const link of links.values()) {
      if (link.objectId !== object.id || !link.object) continue;
      if (isOlder(object, link.object)) {
        ignored = "stale";
        continue;
      }
      // The link stays until its own delete; only its object goes.
      const { object: _gone, ...bare } = link;
      (next ??= new Map(links)).set(link.id, bare);
    }
    if (!next) return ignored;
    this.#floor = { ...this.#floor, objects: next };
    return undefined;
  }

  /** Whether a created/updated copy may replace what is held (or take a deleted entity's place). */
  #admit(kind: EntityKind, held: Stamped | undefined, incoming: Stamped): IgnoredReason | undefined {
    if (held) return notNewer(incoming, held) ? "stale" : undefined;
    if (this.#deletedAfter(kind, incoming)) return "deleted";
    this.#deleted.delete(key(kind, incoming.id));
    return undefined;
  }

  /**
   * Whether a delete removes what is held. A delete carries the entity as it
   * was just before, so its `updatedAt` usually equals the held copy's: only
   * a held copy strictly newer (the entity came back since) outlives it.
   */
  #admitDelete(kind: EntityKind, held: Stamped | undefined, deleted: Stamped): IgnoredReason | undefined {
    if (held && isOlder(deleted, held)) return "stale";
    this.#rememberDeleted(kind, held && notNewer(deleted, held) ? held : deleted);
    return held ? undefined : "absent";
  }

  /** True when the store saw this entity deleted at or after the copy's `updatedAt`. */
  #deletedAfter(kind: EntityKind, entity: Stamped): boolean {
    const deletedAt = this.#deleted.get(key(kind, entity.id));
    const at = stamp(entity);
    return deletedAt !== undefined && at !== undefined && at <= deletedAt;
  }

  #rememberDeleted(kind: EntityKind, entity: Stamped): void {
    const at = stamp(entity);
    // A delete without a usable stamp cannot order later events: not kept.
    if (at === undefined) return;
    const k = key(kind, entity.id);
    this.#remember(k, Math.max(at, this.#deleted.get(k) ?? at));
  }

  #remember(k: string, at: number): void {
    // Re-inserting moves the entry to the newest end; the oldest go first.
    this.#deleted.delete(k);
    this.#deleted.set(k, at);
    if (this.#deleted.size > this.#deletedLimit) {
      const oldest = this.#deleted.keys().next().value as string;
      this.#deleted.delete(oldest);
    }
  }
}

/** `updatedAt` in ms, or undefined when absent or unparseable (such copies are applied in order). */
function stamp(entity: Stamped): number | undefined {
  const at = typeof entity.updatedAt === "string" ? Date.parse(entity.updatedAt) : Number.NaN;
  return Number.isNaN(at) ? undefined : at;
}

/** `a` is known to be at most as new as `b`. */
function notNewer(a: Stamped, b: Stamped): boolean {
  const at = stamp(a);
  const bt = stamp(b);
  return at !== undefined && bt !== undefined && at <= bt;
}

/** `a` is known to be strictly older than `b`. */
function isOlder(a: Stamped, b: Stamped): boolean {
  const at = stamp(a);
  const bt = stamp(b);
  return at !== undefined && bt !== undefined && at < bt;
}

function newest<T extends Stamped>(a: T | undefined, b: T | undefined): T | undefined {
  if (!a || !b) return a ?? b;
  return notNewer(a, b) ? b : a;
}

function key(kind: EntityKind, id: string): string {
  return `${kind}:${id}`;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function byId(entities: readonly unknown[]): Map<string, Stamped> {
  const map = new Map<string, Stamped>();
  for (const entity of entities) {
    if (isRecord(entity) && typeof entity.id === "string") map.set(entity.id, entity as unknown as Stamped);
  }
  return map;
}

// Copy on write: a changed map is a new map, so listeners may compare by identity.
function withEntry<T>(map: ReadonlyMap<string, T>, id: string, value: T): Map<string, T> {
  const next = new Map(map);
  next.set(id, value);
  return next;
}

function withoutEntry<T>(map: ReadonlyMap<string, T>, id: string): Map<string, T> {
  const next = new Map(map);
  next.delete(id);
  return next;
}
