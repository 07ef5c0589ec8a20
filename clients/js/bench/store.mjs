// Events per second the floor store applies on one core, for a section of
// 200 tables: half table.updated, half reservation events (created until the
// section holds 400 reservations, updated after), each newer than the copy
// held, so every event is applied (copy on write included). Run with
// `npm run bench` (it builds dist/ first).

import { FloorStore } from "../dist/index.js";

const TABLES = 200;
const RESERVATIONS = 400;
const EVENTS = 200_000;
const ROUNDS = 7;

const origin = Date.UTC(2026, 0, 10, 15);
const iso = (ms) => new Date(origin + ms).toISOString();
const uuid = (kind, n) => `${kind}0000000-0000-4000-8000-${String(n).padStart(12, "0")}`;
const sectionId = uuid("5", 0);

const table = (n, ms) => ({
  id: uuid("7", n),
  sectionId,
  number: n + 1,
  capacity: 4,
  posX: (n % 20) * 5,
  posY: Math.floor(n / 20) * 5,
  width: 2,
  height: 2,
  tableImageId: uuid("1", 0),
  chairImageId: uuid("2", 0),
  status: "AVAILABLE",
  isAvailable: true,
  createdAt: iso(0),
  updatedAt: iso(ms),
});

const reservation = (n, ms, status) => ({
  id: uuid("9", n),
  restaurantId: uuid("3", 0),
  tableId: uuid("7", n % TABLES),
  reservationDate: "2026-01-15",
  reservationTime: "2026-01-15T19:30:00.000Z",
  numberOfGuests: 2 + (n % 4),
  status,
  createdAt: iso(ms),
  updatedAt: iso(ms),
});

const snapshot = {
  event: "section.snapshot",
  payload: {
    id: sectionId,
    restaurantId: uuid("3", 0),
    name: "Terraza",
    description: null,
    width: 120,
    height: 80,
    posX: 0,
    posY: 0,
    status: "ACTIVE",
    layoutMetadata: { layoutId: null, orientation: "LANDSCAPE", zIndex: 0, notes: null },
    createdAt: iso(0),
    updatedAt: iso(0),
    tables: Array.from({ length: TABLES }, (_, n) => table(n, 1)),
    objects: [],
  },
};

// Built before timing: the figure is the store's, not JSON's or the generator's.
const events = [];
let reservations = 0;
for (let i = 0; i < EVENTS; i++) {
  const ms = 1_000 + i;
  if (i % 2 === 0) {
    events.push({ event: "table.updated", payload: table((i / 2) % TABLES, ms) });
  } else if (reservations < RESERVATIONS) {
    events.push({ event: "reservation.created", payload: reservation(reservations++, ms, "PENDING") });
  } else {
    events.push({ event: "reservation.updated", payload: reservation(i % RESERVATIONS, ms, "CONFIRMED") });
  }
}

function round() {
  const store = new FloorStore();
  store.apply(snapshot);
  let applied = 0;
  const start = process.hrtime.bigint();
  for (const event of events) if (store.apply(event).applied) applied++;
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  if (applied !== EVENTS) throw new Error(`only ${applied} of ${EVENTS} events applied`);
  return EVENTS / seconds;
}

round(); // warm-up: let the JIT compile the hot paths
const rates = Array.from({ length: ROUNDS }, round).sort((a, b) => a - b);
const median = rates[Math.floor(ROUNDS / 2)];
console.log(
  `store: ${Math.round(median).toLocaleString("en-US")} events/s applied (median of ${ROUNDS} rounds of ` +
    `${EVENTS.toLocaleString("en-US")}; ${TABLES} tables, ${RESERVATIONS} reservations; ` +
    `range ${Math.round(rates[0]).toLocaleString("en-US")}-${Math.round(rates.at(-1)).toLocaleString("en-US")})`,
);
