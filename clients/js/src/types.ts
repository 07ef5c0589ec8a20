// The wire format of the mesaya-realtime gateway: the MesaYa entities
// (CONTRACT §1.8, as the Nest API serializes them) and every message the
// gateway and a client exchange (SPEC §1.2, §2.6, §2.8).

/** An ISO 8601 date-time string, as the API serializes dates. */
export type IsoDateTime = string;

export type SectionStatus = "ACTIVE" | "INACTIVE" | "MAINTENANCE";

export interface LayoutMetadata {
  layoutId?: string | null;
  orientation?: "LANDSCAPE" | "PORTRAIT";
  zIndex?: number;
  notes?: string | null;
}

/**
 * A section (floor) of a restaurant. Its `createdAt`/`updatedAt` are the time
 * the API serialized it, not stored values: never compare them.
 */
export interface Section {
  id: string;
  restaurantId: string;
  name: string;
  description: string | null;
  width: number;
  height: number;
  posX: number;
  posY: number;
  status: SectionStatus;
  layoutMetadata: LayoutMetadata;
  /** Present in the snapshot and in `section.deleted`, absent from created/updated events. */
  tables?: Table[];
  createdAt: IsoDateTime;
  updatedAt: IsoDateTime;
}

export type TableStatus = "AVAILABLE" | "OCCUPIED" | "BLOCKED";

export interface Table {
  id: string;
  sectionId: string;
  number: number;
  capacity: number;
  posX: number;
  posY: number;
  width: number;
  height: number;
  tableImageId: string;
  chairImageId: string;
  /** Not persisted upstream: always "AVAILABLE" today. */
  status: TableStatus;
  /** Not persisted upstream: always true today. */
  isAvailable: boolean;
  createdAt: IsoDateTime;
  updatedAt: IsoDateTime;
}

/** A decorative object of a floor plan (a plant, a bar, a wall). */
export interface GraphicObject {
  id: string;
  posX: number;
  posY: number;
  width: number;
  height: number;
  imageId: string;
  createdAt: IsoDateTime;
  updatedAt: IsoDateTime;
}

/** The link that places a graphic object on a section. */
export interface SectionObject {
  id: string;
  sectionId: string;
  objectId: string;
  createdAt: IsoDateTime;
  updatedAt: IsoDateTime;
  /** Added by the gateway: the latest object entity it knows; absent when it never saw the object. */
  object?: GraphicObject;
}

export type ReservationStatus =
  | "PENDING"
  | "CONFIRMED"
  | "REJECTED"
  | "CANCELLED"
  | "CHECKED_IN"
  | "COMPLETED"
  | "NO_SHOW";

/**
 * A reservation of a table. Viewers who are neither the restaurant's staff
 * nor the diner who made it receive it cut down to the gateway's public
 * fields (`WS_PUBLIC_RESERVATION_FIELDS`, by default every field here but
 * `userId`, `userName` and `userEmail`). The store itself relies on `id`
 * only, and uses `tableId` and `updatedAt` when they are there.
 */
export interface Reservation {
  id: string;
  restaurantId: string;
  tableId: string;
  /** "YYYY-MM-DD" when read from the database, a full ISO string in create answers and their events. */
  reservationDate: string;
  reservationTime: IsoDateTime;
  numberOfGuests: number;
  status: ReservationStatus;
  createdAt: IsoDateTime;
  updatedAt: IsoDateTime;
  /** Personal: staff and the diner who made it only. */
  userId?: string;
  /** Personal: staff and the diner who made it only. */
  userName?: string;
  /** Personal: staff and the diner who made it only. */
  userEmail?: string;
}

export type RestaurantStatus = "ACTIVE" | "SUSPENDED" | "ARCHIVED";

export type Weekday = "MONDAY" | "TUESDAY" | "WEDNESDAY" | "THURSDAY" | "FRIDAY" | "SATURDAY" | "SUNDAY";

/**
 * A restaurant, as its Kafka events carry it. Viewers who are not its staff
 * do not receive `ownerId`, `subscriptionId` and `adminNote`.
 */
export interface Restaurant {
  id: string;
  name: string;
  description: string | null;
  location: string;
  /** "HH:MM". */
  openTime: string;
  /** "HH:MM". */
  closeTime: string;
  daysOpen: Weekday[];
  totalCapacity: number;
  imageId: string | number | null;
  status: RestaurantStatus;
  active: boolean;
  createdAt: IsoDateTime;
  updatedAt: IsoDateTime;
  ownerId?: string | null;
  subscriptionId?: string | number | null;
  adminNote?: string | null;
}

/** The first frame of a connection: the section with its tables and object links. */
export interface SectionSnapshot extends Section {
  tables: Table[];
  objects: SectionObject[];
}

// ---- Server → client -------------------------------------------------------

export type EntityKind = "section" | "table" | "object" | "section-object" | "reservation" | "restaurant";
export type CrudAction = "created" | "updated" | "deleted";
export type RestaurantAction = CrudAction | "status_changed";

export interface SnapshotMessage {
  event: "section.snapshot";
  payload: SectionSnapshot;
}

/** Sent instead of a snapshot when a resume succeeded; the `replayed` missed frames follow. */
export interface ResumedMessage {
  event: "section.resumed";
  payload: { replayed: number };
}

export interface SectionEvent {
  event: `section.${CrudAction}`;
  payload: Section;
}

export interface TableEvent {
  event: `table.${CrudAction}`;
  payload: Table;
}

export interface ObjectEvent {
  event: `object.${CrudAction}`;
  payload: GraphicObject;
}

export interface SectionObjectEvent {
  event: `section-object.${CrudAction}`;
  payload: SectionObject;
}

export interface ReservationEvent {
  event: `reservation.${CrudAction}`;
  payload: Reservation;
}

export interface RestaurantEvent {
  event: `restaurant.${RestaurantAction}`;
  payload: Restaurant;
}

/** A change of one entity, with the entity as it is after the change (before it, for deletes). */
export type EntityEvent =
  | SectionEvent
  | TableEvent
  | ObjectEvent
  | SectionObjectEvent
  | ReservationEvent
  | RestaurantEvent;

export type EntityEventName = EntityEvent["event"];

/** "Everything before this frame was delivered": the token to resume after it. */
export interface PositionMessage {
  event: "section.position";
  payload: { token: string };
}

export interface PongMessage {
  event: "pong";
}

/** The connection's token expires at `exp` (unix seconds): send `auth.refresh` before then. */
export interface AuthExpiringMessage {
  event: "auth.expiring";
  payload: { exp: number };
}

export interface AuthRefreshedMessage {
  event: "auth.refreshed";
  payload: { exp: number };
}

export type AuthRefreshFailure = "expired" | "invalid" | "other_user" | "forbidden";

export interface AuthRefreshFailedMessage {
  event: "auth.refresh_failed";
  payload: { reason: AuthRefreshFailure };
}

export type ProtocolMessage =
  | PositionMessage
  | PongMessage
  | AuthExpiringMessage
  | AuthRefreshedMessage
  | AuthRefreshFailedMessage;

export type ServerMessage = SnapshotMessage | ResumedMessage | EntityEvent | ProtocolMessage;

// ---- Client → server -------------------------------------------------------

/** An application-level ping (browsers cannot send ping frames); answered with `pong`. */
export interface PingMessage {
  event: "ping";
}

/** Replaces the connection's token in band; answered with `auth.refreshed` or `auth.refresh_failed`. */
export interface AuthRefreshMessage {
  event: "auth.refresh";
  payload: { token: string };
}

export type ClientMessage = PingMessage | AuthRefreshMessage;
