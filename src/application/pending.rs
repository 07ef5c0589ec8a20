//! Connections that have not upgraded yet (SPEC §1.1): accepted, in the
//! HTTP phase, keep-alive idle ones included. They are bounded before
//! anything else, since nobody has shown a token yet: per instance (the
//! longest-idle is closed to make room for a new one) and per client
//! address (a new one beyond it is refused). A connection holds a [`Place`]
//! from its accept until it upgrades ([`Place::leave`]) or ends (drop), so
//! the counts are exact whichever way it goes. Shards accept concurrently,
//! so one registry serves them all.
//!
//! The registry decides; closing a socket is the caller's business, through
//! the [`Close`] handle it registers with each connection.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::domain::limits::PendingLimits;

/// How the registry has a connection closed when it evicts it.
pub trait Close: Send {
    fn close(&self);
}

/// The client address already holds `max_per_client` connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the client address holds its maximum of connections that have not upgraded")]
pub struct ClientFull;

pub struct PendingConnections<C> {
    limits: PendingLimits,
    state: Mutex<State<C>>,
}

/// A connection's place among the pending ones, given back on drop.
pub struct Place<C: Close> {
    registry: Arc<PendingConnections<C>>,
    id: u64,
}

/// What [`PendingConnections::enter`] gave a new connection.
pub struct Entered<C: Close> {
    pub place: Place<C>,
    /// Another connection was evicted (and closed) to make room.
    pub evicted: bool,
}

struct State<C> {
    /// Ticks order the connections by their last activity; ids are the
    /// tick of their accept, so no two connections share either.
    next_tick: u64,
    entries: HashMap<u64, Entry<C>>,
    /// Ids by the tick of their last activity: the first is the longest idle.
    by_activity: BTreeMap<u64, u64>,
    per_client: HashMap<IpAddr, usize>,
}

struct Entry<C> {
    /// The address the per-client cap counts it under; `None` for a
    /// connection from a trusted proxy before its first request names a
    /// client.
    client: Option<IpAddr>,
    last_active: u64,
    close: C,
}

impl<C: Close> PendingConnections<C> {
    pub fn new(limits: PendingLimits) -> Arc<Self> {
        let state =
            State { next_tick: 0, entries: HashMap::new(), by_activity: BTreeMap::new(), per_client: HashMap::new() };
        Arc::new(Self { limits, state: Mutex::new(state) })
    }

    /// A new connection, counted under `client` (see [`Entry::client`]).
    /// Refused when that address holds its maximum; at the instance's
    /// maximum, the longest-idle connection is evicted to make room.
    pub fn enter(self: &Arc<Self>, client: Option<IpAddr>, close: C) -> Result<Entered<C>, ClientFull> {
        let mut state = self.lock();
        if client.is_some_and(|client| state.is_full(client, self.limits.max_per_client)) {
            return Err(ClientFull);
        }
        let evicted = if state.entries.len() >= self.limits.max_pending { state.remove_longest_idle() } else { None };
        let id = state.tick();
        state.count(client, 1);
        state.by_activity.insert(id, id);
        state.entries.insert(id, Entry { client, last_active: id, close });
        drop(state);
        if let Some(entry) = &evicted {
            entry.close.close();
        }
        Ok(Entered { place: Place { registry: Arc::clone(self), id }, evicted: evicted.is_some() })
    }

    /// Connections pending now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State<C>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<C: Close> Place<C> {
    /// A request arrived on the connection, for `client`: its idle time
    /// starts again, and it now counts under `client`, which a connection
    /// from a trusted proxy learns request by request. Refused when `client`
    /// is another address than the connection counted under and already
    /// holds its maximum. A place already evicted stays gone.
    pub fn request(&self, client: Option<IpAddr>) -> Result<(), ClientFull> {
        let max_per_client = self.registry.limits.max_per_client;
        let mut state = self.registry.lock();
        let Some(counted) = state.entries.get(&self.id).map(|entry| entry.client) else { return Ok(()) };
        if counted != client {
            if client.is_some_and(|client| state.is_full(client, max_per_client)) {
                return Err(ClientFull);
            }
            state.count(counted, -1);
            state.count(client, 1);
        }
        state.touch(self.id, client);
        Ok(())
    }

    /// The connection upgraded: from now on it is a session, counted by
    /// admission instead. Idempotent.
    pub fn leave(&self) {
        let mut state = self.registry.lock();
        state.remove(self.id);
    }
}

impl<C: Close> Drop for Place<C> {
    fn drop(&mut self) {
        self.leave();
    }
}

impl<C> State<C> {
    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    fn is_full(&self, client: IpAddr, max_per_client: usize) -> bool {
        max_per_client != 0 && self.per_client.get(&client).is_some_and(|held| *held >= max_per_client)
    }

    /// Adds `change` to `client`'s count; an address leaves the map with
    /// its last connection.
    fn count(&mut self, client: Option<IpAddr>, change: isize) {
        let Some(client) = client else { return };
        let held = self.per_client.entry(client).or_default();
        *held = held.checked_add_signed(change).expect("a count never goes below zero");
        if *held == 0 {
            self.per_client.remove(&client);
        }
    }

    fn remove(&mut self, id: u64) -> Option<Entry<C>> {
        let entry = self.entries.remove(&id)?;
        self.by_activity.remove(&entry.last_active);
        self.count(entry.client, -1);
        Some(entry)
    }

    fn remove_longest_idle(&mut self) -> Option<Entry<C>> {
        let (_, &id) = self.by_activity.first_key_value()?;
        self.remove(id)
    }

    /// Marks the connection active now, counted under `client`.
    fn touch(&mut self, id: u64, client: Option<IpAddr>) {
        let tick = self.tick();
        let Some(entry) = self.entries.get_mut(&id) else { return };
        entry.client = client;
        self.by_activity.remove(&std::mem::replace(&mut entry.last_active, tick));
        self.by_activity.insert(tick, id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// A connection that only records whether it was closed.
    #[derive(Clone, Default)]
    struct FakeConnection(Arc<AtomicBool>);

    impl FakeConnection {
        fn is_closed(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    impl Close for FakeConnection {
        fn close(&self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    fn registry(max_pending: usize, max_per_client: usize) -> Arc<PendingConnections<FakeConnection>> {
        PendingConnections::new(PendingLimits { max_pending, max_per_client })
    }

    /// Connections pending now under `client`.
    fn held_by(pending: &PendingConnections<FakeConnection>, client: Option<IpAddr>) -> usize {
        pending.lock().per_client.get(&client.unwrap()).copied().unwrap_or(0)
    }

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::from([203, 0, 113, last]))
    }

    /// A connection entered under `client`, with the handle that tells
    /// whether the registry closed it.
    fn enter(
        registry: &Arc<PendingConnections<FakeConnection>>,
        client: Option<IpAddr>,
    ) -> Result<(Place<FakeConnection>, FakeConnection, bool), ClientFull> {
        let connection = FakeConnection::default();
        let entered = registry.enter(client, connection.clone())?;
        Ok((entered.place, connection, entered.evicted))
    }

    #[test]
    fn at_the_instance_maximum_the_longest_idle_connection_is_evicted() {
        let pending = registry(3, 0);
        let (first, first_conn, _) = enter(&pending, ip(1)).unwrap();
        let (_second, second_conn, _) = enter(&pending, ip(2)).unwrap();
        let (_third, third_conn, evicted) = enter(&pending, ip(3)).unwrap();
        assert!(!evicted);
        // A request makes the oldest connection the most recently active.
        first.request(ip(1)).unwrap();

        let (_fourth, _, evicted) = enter(&pending, ip(4)).unwrap();
        assert!(evicted);
        assert!(second_conn.is_closed(), "idle since its accept, the longest");
        assert!(!first_conn.is_closed() && !third_conn.is_closed());
        assert_eq!((pending.len(), held_by(&pending, ip(2))), (3, 0), "the evicted one is counted out");

        let (_fifth, _, _) = enter(&pending, ip(5)).unwrap();
        assert!(third_conn.is_closed() && !first_conn.is_closed());
        drop(first);
        assert_eq!(pending.len(), 2);
    }

    #[test]
    fn an_address_at_its_maximum_is_refused_until_one_of_its_connections_ends() {
        let pending = registry(100, 2);
        let (a, _, _) = enter(&pending, ip(1)).unwrap();
        let _b = enter(&pending, ip(1)).unwrap();
        assert!(matches!(enter(&pending, ip(1)), Err(ClientFull)));
        assert_eq!(pending.len(), 2, "a refusal holds nothing");
        assert!(enter(&pending, ip(2)).is_ok(), "another address is served");
        drop(a);
        assert!(enter(&pending, ip(1)).is_ok(), "the place came back");
    }

    #[test]
    fn a_refusal_evicts_nobody() {
        let pending = registry(2, 1);
        let (_a, a_conn, _) = enter(&pending, ip(1)).unwrap();
        let (_b, b_conn, _) = enter(&pending, ip(2)).unwrap();
        assert!(enter(&pending, ip(1)).is_err());
        assert!(!a_conn.is_closed() && !b_conn.is_closed());
    }

    #[test]
    fn zero_means_no_cap_per_address() {
        let pending = registry(50, 0);
        let places: Vec<_> = (0..50).map(|_| enter(&pending, ip(1)).unwrap()).collect();
        assert_eq!(held_by(&pending, ip(1)), 50);
        drop(places);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_connection_from_a_proxy_counts_under_the_client_of_its_latest_request() {
        let pending = registry(100, 2);
        // The proxy's connections count under nobody until a request names a client.
        let proxied: Vec<_> = (0..5).map(|_| enter(&pending, None).unwrap().0).collect();
        proxied[0].request(ip(7)).unwrap();
        proxied[1].request(ip(7)).unwrap();
        assert_eq!(proxied[2].request(ip(7)), Err(ClientFull), "a third connection for that client");
        assert_eq!(held_by(&pending, ip(7)), 2);
        proxied[0].request(ip(7)).unwrap();
        assert_eq!(held_by(&pending, ip(7)), 2, "the same client again is no new connection");

        proxied[1].request(ip(8)).unwrap();
        assert_eq!((held_by(&pending, ip(7)), held_by(&pending, ip(8))), (1, 1), "moved");
        proxied[2].request(ip(7)).unwrap();
        proxied[3].request(None).unwrap();
        drop(proxied);
        assert!(pending.is_empty() && pending.lock().per_client.is_empty());
    }

    #[test]
    fn an_upgraded_connection_leaves_at_once_and_only_once() {
        let pending = registry(1, 0);
        let (upgraded, conn, _) = enter(&pending, ip(1)).unwrap();
        upgraded.leave();
        assert!(pending.is_empty());
        let (_next, _, evicted) = enter(&pending, ip(2)).unwrap();
        assert!(!evicted && !conn.is_closed(), "an upgraded connection is never evicted");
        upgraded.leave();
        drop(upgraded);
        assert_eq!(pending.len(), 1, "leaving twice takes no other connection's place");
    }

    #[test]
    fn an_evicted_place_stays_gone() {
        let pending = registry(1, 1);
        let (evicted, conn, _) = enter(&pending, ip(1)).unwrap();
        let (_newer, _, _) = enter(&pending, ip(2)).unwrap();
        assert!(conn.is_closed());
        assert_eq!(evicted.request(ip(1)), Ok(()), "its last request may still be under way");
        assert_eq!((pending.len(), held_by(&pending, ip(1))), (1, 0));
        drop(evicted);
        assert_eq!(pending.len(), 1);
    }
}
