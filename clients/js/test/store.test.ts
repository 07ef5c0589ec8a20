import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { FloorStore, REMEMBERED_DELETES, isFloorMessage, type Change } from "../src/store.js";
import type { EntityEvent } from "../src/types.js";
import {
  RESTAURANT_ID,
  SECTION_ID,
  at,
  graphicObject,
  link,
  reservation,
  restaurant,
  section,
  snapshot,
  table,
} from "./fakes.js";

/** Applies an event built from loose test data (the wire is not typed either). */
function apply(store: FloorStore, event: string, payload: unknown): Change {
  return store.apply({ event, payload } as EntityEvent);
}

function ignored(change: Change): string | undefined {
  assert.equal(change.kind, "event");
  return change.kind === "event" ? (change.applied ? undefined : change.ignored) : undefined;
}

function withTables(...ids: string[]): FloorStore {
  const store = new FloorStore();
  store.apply(snapshot(ids.map((id) => table(id, at(10)))));
  return store;
}

describe("snapshot", () => {
  test("fills the floor; the section is kept without its tables and objects", () => {
    const store = new FloorStore();
    const change = store.apply(
      snapshot([table("t1", at(10)), table("t2", at(11))], [link("l1", "o1", at(5), graphicObject("o1", at(4)))]),
    );
    assert.deepEqual(change, { kind: "snapshot" });
    const floor = store.floor;
    assert.equal(floor.section?.id, SECTION_ID);
    assert.equal(floor.section?.name, "Terraza");
    assert.ok(!("tables" in floor.section!) && !("objects" in floor.section!));
    assert.deepEqual([...floor.tables.keys()], ["t1", "t2"]);
    assert.equal(floor.objects.get("l1")?.object?.id, "o1");
    assert.equal(floor.reservations.size, 0);
    assert.equal(floor.restaurant, undefined);
  });

  test("an event already in the snapshot (same updatedAt, 25-100 ms later) is ignored as stale", () => {
    const store = withTables("t1");
    const before = store.floor;
    const change = apply(store, "table.updated", table("t1", at(10)));
    assert.equal(ignored(change), "stale");
    assert.equal(store.floor, before, "an ignored event leaves the very same floor");
  });

  test("an event older than the snapshot is ignored", () => {
    const store = withTables("t1");
    assert.equal(ignored(apply(store, "table.updated", table("t1", at(9), { capacity: 2 }))), "stale");
    assert.equal(store.floor.tables.get("t1")?.capacity, 4);
  });

  test("replaces tables, objects and the section, keeps the restaurant and the reservations of tables still present", () => {
    const store = withTables("t1", "t2");
    apply(store, "section-object.created", link("l1", "o1", at(20)));
    apply(store, "restaurant.updated", restaurant(at(20)));
    apply(store, "reservation.created", reservation("r1", "t1", at(20)));
    apply(store, "reservation.created", reservation("r2", "t2", at(20)));

    store.apply(snapshot([table("t1", at(30)), table("t3", at(30))], [], at(2000)));

    const floor = store.floor;
    assert.deepEqual([...floor.tables.keys()], ["t1", "t3"]);
    assert.equal(floor.objects.size, 0);
    assert.equal(floor.restaurant?.id, RESTAURANT_ID);
    assert.deepEqual([...floor.reservations.keys()], ["r1"], "r2's table is gone, and r2 with it");
    // r2 left the floor: a late copy of it cannot bring it back.
    assert.equal(ignored(apply(store, "reservation.updated", reservation("r2", "t2", at(20)))), "deleted");
  });

  test("entities in a snapshot are alive whatever deletes were seen before", () => {
    const store = withTables("t1");
    apply(store, "table.deleted", table("t1", at(50)));
    store.apply(snapshot([table("t1", at(40))]));
    // Compared with the snapshot's copy (at 40), not with the delete (at 50).
    assert.equal(apply(store, "table.updated", table("t1", at(45), { capacity: 8 })).kind, "event");
    assert.equal(store.floor.tables.get("t1")?.capacity, 8);
  });

  test("section.resumed keeps the floor as it is", () => {
    const store = withTables("t1");
    const before = store.floor;
    assert.deepEqual(store.apply({ event: "section.resumed", payload: { replayed: 3 } }), {
      kind: "resumed",
      replayed: 3,
    });
    assert.equal(store.floor, before);
  });
});

describe("tables", () => {
  test("created and a newer updated upsert", () => {
    const store = withTables("t1");
    assert.equal(ignored(apply(store, "table.created", table("t2", at(20)))), undefined);
    assert.equal(ignored(apply(store, "table.updated", table("t1", at(21), { posX: 99 }))), undefined);
    assert.equal(store.floor.tables.get("t1")?.posX, 99);
    assert.equal(store.floor.tables.size, 2);
    assert.equal(ignored(apply(store, "table.created", table("t2", at(20)))), "stale", "a duplicate");
  });

  test("deleted removes the table and its reservations", () => {
    const store = withTables("t1", "t2");
    apply(store, "reservation.created", reservation("r1", "t1", at(20)));
    apply(store, "reservation.created", reservation("r2", "t1", at(21)));
    apply(store, "reservation.created", reservation("r3", "t2", at(22)));
    const change = apply(store, "table.deleted", table("t1", at(10)));
    assert.deepEqual(change, {
      kind: "event",
      event: "table.deleted",
      entity: "table",
      action: "deleted",
      id: "t1",
      applied: true,
    });
    assert.deepEqual([...store.floor.tables.keys()], ["t2"]);
    assert.deepEqual([...store.floor.reservations.keys()], ["r3"]);
    assert.equal(ignored(apply(store, "reservation.updated", reservation("r2", "t1", at(21)))), "deleted");
  });

  test("a late update after the delete cannot bring the table back; a newer one can", () => {
    const store = withTables("t1");
    apply(store, "table.deleted", table("t1", at(10)));
    assert.equal(ignored(apply(store, "table.updated", table("t1", at(10)))), "deleted");
    assert.equal(ignored(apply(store, "table.updated", table("t1", at(5)))), "deleted");
    assert.equal(store.floor.tables.size, 0);
    assert.equal(ignored(apply(store, "table.updated", table("t1", at(11)))), undefined);
    assert.ok(store.floor.tables.has("t1"));
  });

  test("a table moved to another section arrives as table.deleted carrying its new section", () => {
    const store = withTables("t1");
    apply(store, "reservation.created", reservation("r1", "t1", at(20)));
    const moved = table("t1", at(30), { sectionId: "0b6c2f0e-9999-4d2a-8e1f-2a3b4c5d6e7f" });
    assert.equal(ignored(apply(store, "table.deleted", moved)), undefined);
    assert.equal(store.floor.tables.size, 0);
    assert.equal(store.floor.reservations.size, 0);
    // The pre-move copy, replayed late, stays out.
    assert.equal(ignored(apply(store, "table.updated", table("t1", at(20)))), "deleted");
  });

  test("a delete of a table not held is remembered, so its stale update stays out", () => {
    const store = withTables();
    assert.equal(ignored(apply(store, "table.deleted", table("t9", at(30)))), "absent");
    assert.equal(ignored(apply(store, "table.updated", table("t9", at(29)))), "deleted");
    assert.equal(store.floor.tables.size, 0);
  });

  test("a delete older than the copy held does not remove it", () => {
    const store = withTables("t1");
    apply(store, "table.updated", table("t1", at(40)));
    assert.equal(ignored(apply(store, "table.deleted", table("t1", at(30)))), "stale");
    assert.ok(store.floor.tables.has("t1"));
  });

  test("copies without a usable updatedAt are applied in order", () => {
    const store = withTables("t1");
    const { updatedAt: _dropped, ...bare } = table("t1", at(0), { capacity: 9 });
    assert.equal(ignored(apply(store, "table.updated", bare)), undefined);
    assert.equal(store.floor.tables.get("t1")?.capacity, 9);
  });

  test("a payload without an id is ignored", () => {
    const store = withTables("t1");
    assert.equal(ignored(apply(store, "table.updated", { capacity: 3 })), "invalid");
    assert.equal(ignored(apply(store, "table.updated", null)), "invalid");
  });
});

describe("objects and their links", () => {
  function withLinks(): FloorStore {
    const store = new FloorStore();
    store.apply(
      snapshot(
        [],
        [
          link("l1", "o1", at(5), graphicObject("o1", at(4))),
          link("l2", "o1", at(5), graphicObject("o1", at(4))),
          link("l3", "o2", at(5)),
        ],
      ),
    );
    return store;
  }

  test("object.updated updates the object of every link holding it", () => {
    const store = withLinks();
    assert.equal(ignored(apply(store, "object.updated", graphicObject("o1", at(6), 77))), undefined);
    assert.equal(store.floor.objects.get("l1")?.object?.posX, 77);
    assert.equal(store.floor.objects.get("l2")?.object?.posX, 77);
    assert.equal(ignored(apply(store, "object.updated", graphicObject("o1", at(6), 1))), "stale");
    assert.equal(store.floor.objects.get("l1")?.object?.posX, 77);
  });

  test("an object first seen in an event is added to the links that lacked it", () => {
    const store = withLinks();
    assert.equal(ignored(apply(store, "object.created", graphicObject("o2", at(6)))), undefined);
    assert.equal(store.floor.objects.get("l3")?.object?.id, "o2");
  });

  test("an object no link of this floor holds changes nothing", () => {
    const store = withLinks();
    assert.equal(ignored(apply(store, "object.updated", graphicObject("o9", at(6)))), "absent");
  });

  test("object.deleted removes the object key from every link holding it; the links stay", () => {
    const store = withLinks();
    assert.equal(ignored(apply(store, "object.deleted", graphicObject("o1", at(4)))), undefined);
    assert.deepEqual([...store.floor.objects.keys()], ["l1", "l2", "l3"]);
    assert.ok(!("object" in store.floor.objects.get("l1")!));
    assert.ok(!("object" in store.floor.objects.get("l2")!));
    // Late copies of the deleted object stay out, alone or inside a link event.
    assert.equal(ignored(apply(store, "object.updated", graphicObject("o1", at(4)))), "deleted");
    apply(store, "section-object.updated", link("l1", "o1", at(6), graphicObject("o1", at(3))));
    assert.equal(store.floor.objects.get("l1")?.updatedAt, at(6));
    assert.ok(!("object" in store.floor.objects.get("l1")!));
  });

  test("section-object events upsert and delete links", () => {
    const store = withLinks();
    assert.equal(ignored(apply(store, "section-object.created", link("l4", "o3", at(7), graphicObject("o3", at(7))))), undefined);
    assert.equal(store.floor.objects.get("l4")?.object?.id, "o3");
    assert.equal(ignored(apply(store, "section-object.created", link("l4", "o3", at(7)))), "stale");
    assert.equal(ignored(apply(store, "section-object.deleted", link("l4", "o3", at(7)))), undefined);
    assert.ok(!store.floor.objects.has("l4"));
    assert.equal(ignored(apply(store, "section-object.updated", link("l4", "o3", at(7)))), "deleted");
  });

  test("a link update without its object keeps the object the floor had; the newer copy wins", () => {
    const store = withLinks();
    apply(store, "section-object.updated", link("l1", "o1", at(8)));
    assert.equal(store.floor.objects.get("l1")?.object?.updatedAt, at(4));
    apply(store, "section-object.updated", link("l1", "o1", at(9), graphicObject("o1", at(3))));
    assert.equal(store.floor.objects.get("l1")?.object?.updatedAt, at(4), "an older object copy loses");
    apply(store, "section-object.updated", link("l1", "o1", at(10), graphicObject("o1", at(9))));
    assert.equal(store.floor.objects.get("l1")?.object?.updatedAt, at(9));
    apply(store, "section-object.updated", link("l1", "o5", at(11)));
    assert.ok(!("object" in store.floor.objects.get("l1")!), "another object: the old one is not carried over");
  });
});

describe("reservations", () => {
  test("by id; created, newer updated, deleted; duplicates ignored", () => {
    const store = withTables("t1");
    apply(store, "reservation.created", reservation("r1", "t1", at(20)));
    assert.equal(ignored(apply(store, "reservation.created", reservation("r1", "t1", at(20)))), "stale");
    apply(store, "reservation.updated", reservation("r1", "t1", at(21), "CONFIRMED"));
    assert.equal(store.floor.reservations.get("r1")?.status, "CONFIRMED");
    assert.equal(store.floor.reservations.get("r1")?.userId, undefined, "a public payload has no userId");
    apply(store, "reservation.deleted", reservation("r1", "t1", at(21), "CONFIRMED"));
    assert.equal(store.floor.reservations.size, 0);
    assert.equal(ignored(apply(store, "reservation.updated", reservation("r1", "t1", at(21)))), "deleted");
  });

  test("a reservation whose table this floor does not hold yet is kept until a snapshot without the table", () => {
    const store = withTables("t1");
    apply(store, "reservation.created", reservation("r1", "t7", at(20)));
    apply(store, "table.created", table("t7", at(19)));
    assert.equal(store.floor.reservations.get("r1")?.tableId, "t7");
    store.apply(snapshot([table("t1", at(10))]));
    assert.equal(store.floor.reservations.size, 0);
  });
});

describe("sections and restaurants", () => {
  test("sections are applied in order, never compared (their timestamps are read times)", () => {
    const store = withTables("t1");
    apply(store, "section.updated", section(at(500), "Patio"));
    assert.equal(store.floor.section?.name, "Patio");
    assert.equal(store.floor.tables.size, 1, "a section event carries no tables and removes none");
    apply(store, "section.updated", section(at(100), "Jardín"));
    assert.equal(store.floor.section?.name, "Jardín");
  });

  test("an event of another section changes nothing", () => {
    const store = withTables("t1");
    assert.equal(ignored(apply(store, "section.updated", { ...section(at(5)), id: "other" })), "absent");
  });

  for (const event of ["section.deleted", "restaurant.deleted"]) {
    test(`${event} ends the store: later events are ignored`, () => {
      const store = withTables("t1");
      const payload = event === "section.deleted" ? { ...section(at(5)), tables: [] } : restaurant(at(5));
      assert.equal(ignored(apply(store, event, payload)), undefined);
      assert.equal(store.ended, true);
      assert.equal(ignored(apply(store, "table.updated", table("t1", at(99)))), "ended");
      assert.equal(store.floor.tables.get("t1")?.updatedAt, at(10));
    });
  }

  test("restaurant events set the restaurant; stale copies and other restaurants are ignored", () => {
    const store = withTables();
    const initial = store.floor;
    assert.equal(initial.restaurant, undefined);
    apply(store, "restaurant.updated", restaurant(at(20)));
    assert.equal(store.floor.restaurant?.name, "La Mesa");
    apply(store, "restaurant.status_changed", { ...restaurant(at(21)), status: "SUSPENDED" });
    assert.equal(store.floor.restaurant?.status, "SUSPENDED");
    assert.equal(ignored(apply(store, "restaurant.updated", restaurant(at(20), "Old"))), "stale");
    assert.equal(ignored(apply(store, "restaurant.updated", { ...restaurant(at(30)), id: "x" })), "absent");
    assert.equal(store.floor.restaurant?.status, "SUSPENDED");
  });
});

describe("remembered deletes", () => {
  test("the newest are kept, up to the limit", () => {
    const store = new FloorStore({ rememberedDeletes: 3 });
    store.apply(snapshot([]));
    for (const id of ["a", "b", "c", "d"]) apply(store, "table.deleted", table(id, at(10)));
    assert.equal(ignored(apply(store, "table.updated", table("a", at(10)))), undefined, "a was forgotten");
    for (const id of ["b", "c", "d"]) {
      assert.equal(ignored(apply(store, "table.updated", table(id, at(10)))), "deleted");
    }
  });

  test(`the default limit is ${REMEMBERED_DELETES}`, () => {
    assert.equal(REMEMBERED_DELETES, 10_000);
    const store = new FloorStore();
    store.apply(snapshot([]));
    for (let i = 0; i <= REMEMBERED_DELETES; i++) apply(store, "table.deleted", table(`t${i}`, at(10)));
    assert.equal(store.toJSON().deleted.length, REMEMBERED_DELETES);
    assert.equal(ignored(apply(store, "table.updated", table("t0", at(10)))), undefined, "the oldest went");
    assert.equal(ignored(apply(store, "table.updated", table("t1", at(10)))), "deleted");
  });
});

describe("the floor value", () => {
  test("a new floor after every applied change; maps that did not change keep their identity", () => {
    const store = withTables("t1");
    const before = store.floor;
    apply(store, "reservation.created", reservation("r1", "t1", at(20)));
    const after = store.floor;
    assert.notEqual(after, before);
    assert.equal(after.tables, before.tables);
    assert.equal(after.objects, before.objects);
    assert.notEqual(after.reservations, before.reservations);
    assert.equal(before.reservations.size, 0, "the earlier floor is not mutated");
  });

  test("toJSON and restore carry the floor and the remembered deletes", () => {
    const store = withTables("t1", "t2");
    apply(store, "restaurant.updated", restaurant(at(20)));
    apply(store, "section-object.created", link("l1", "o1", at(5), graphicObject("o1", at(4))));
    apply(store, "reservation.created", reservation("r1", "t1", at(20)));
    apply(store, "table.deleted", table("t2", at(10)));

    const restored = FloorStore.restore(JSON.parse(JSON.stringify(store)));
    assert.ok(restored);
    assert.deepEqual(restored.floor, store.floor);
    assert.equal(ignored(apply(restored, "table.updated", table("t2", at(10)))), "deleted");
    assert.equal(ignored(apply(restored, "table.updated", table("t1", at(10)))), "stale");
  });

  test("restore refuses what toJSON did not make", () => {
    for (const data of [null, 3, "x", {}, { section: {}, tables: [] }, [], { section: 1, tables: [], objects: [], reservations: [], deleted: [] }]) {
      assert.equal(FloorStore.restore(data), undefined, JSON.stringify(data));
    }
  });

  test("isFloorMessage knows the store's messages and no others", () => {
    for (const event of ["section.snapshot", "section.resumed", "section-object.updated", "restaurant.status_changed", "object.deleted"]) {
      assert.equal(isFloorMessage({ event }), true, event);
    }
    for (const event of ["section.position", "pong", "auth.expiring", "table.selecting", "section.status_changed"]) {
      assert.equal(isFloorMessage({ event }), false, event);
    }
  });
});
