// What to do when the gateway closes a connection (SPEC §1.3, §4), and how
// long to wait before the next attempt. Pure: randomness is passed in.

/** The first backoff window; each failure doubles it up to the cap. */
export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 30_000;
/** A connection live this long proves the path works again: backoff starts over. */
export const BACKOFF_RESET_AFTER_MS = 30_000;
/** After a 1001 (an instance draining for a deploy) clients spread their reconnects over this. */
export const SHUTDOWN_SPREAD_MS = 5_000;

export type CloseDecision =
  /** The watch is over: reconnecting cannot help. */
  | { kind: "final" }
  | {
      kind: "reconnect";
      /** `backoff`: exponential with full jitter; `spread`: uniform over SHUTDOWN_SPREAD_MS, no backoff. */
      wait: "backoff" | "spread";
      /** The token was refused: ask `getToken` for a new one. */
      tokenRejected: boolean;
    };

const FINAL: CloseDecision = { kind: "final" };
const BACKOFF: CloseDecision = { kind: "reconnect", wait: "backoff", tokenRejected: false };

export function decideOnClose(code: number): CloseDecision {
  switch (code) {
    case 1000: // the section or its restaurant was deleted
    case 4400: // the API refused the request itself (e.g. the id)
    case 4403: // the API refused this user
    case 4404: // no such section
    case 1002: // protocol error, 1008 policy (rate), 1009 frame too large: a client bug,
    case 1008: // and reconnecting would only repeat it
    case 1009:
      return FINAL;
    case 1001: // a deploy: every client of the instance leaves at once, so spread them
      return { kind: "reconnect", wait: "spread", tokenRejected: false };
    case 4401: // the token expired, or the API refused it
      return { kind: "reconnect", wait: "backoff", tokenRejected: true };
    default:
      // 1006 (no close frame, or an upgrade refused with a status the browser
      // hides), 1011, 1013, 1014, 4408 (slow consumer: resume or a fresh
      // snapshot), and any code this version does not know: retrying later is
      // the safe answer.
      return BACKOFF;
  }
}

/**
 * Full jitter: uniform in [0, min(cap, base · 2^failures)), so clients that
 * lost the same instance at the same moment do not come back together.
 * `random` returns a number in [0, 1), as Math.random.
 */
export function backoffDelay(failures: number, random: () => number): number {
  const window = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(failures, 30));
  return random() * window;
}

/** Uniform in [0, SHUTDOWN_SPREAD_MS). */
export function spreadDelay(random: () => number): number {
  return random() * SHUTDOWN_SPREAD_MS;
}
