//! Admission control: how many WebSocket sessions this instance holds, in
//! all and per user, decided before the upgrade. A session counts from its
//! admission (before the upgrade answer) until its [`Permit`] drops, when the
//! session ends however it ends, so those still waiting for their snapshot
//! count too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The instance holds its maximum (503).
    InstanceFull,
    /// This user holds their maximum (429).
    UserFull,
}

pub struct Admission {
    max_connections: usize,
    /// `0`: no cap.
    max_per_user: usize,
    held: AtomicUsize,
    /// Sessions per token `sub`; an entry leaves with the user's last one.
    per_user: Mutex<HashMap<String, usize>>,
}

impl Admission {
    pub fn new(max_connections: usize, max_per_user: usize) -> Arc<Self> {
        Arc::new(Self { max_connections, max_per_user, held: AtomicUsize::new(0), per_user: Mutex::default() })
    }

    pub fn admit(self: &Arc<Self>, user: &str) -> Result<Permit, Refused> {
        // Reserve a place first, so concurrent admissions on other shards
        // can never overshoot the maximum together.
        if self.held.fetch_add(1, Ordering::AcqRel) >= self.max_connections {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::InstanceFull);
        }
        let mut per_user = self.per_user.lock().unwrap_or_else(PoisonError::into_inner);
        let sessions = per_user.entry(user.to_string()).or_default();
        if self.max_per_user != 0 && *sessions >= self.max_per_user {
            drop(per_user);
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(Refused::UserFull);
        }
        *sessions += 1;
        Ok(Permit { admission: Arc::clone(self), user: user.to_string() })
    }

    /// Sessions held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// One admitted session's place; given back on drop.
pub struct Permit {
    admission: Arc<Admission>,
    user: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut per_user = self.admission.per_user.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sessions) = per_user.get_mut(&self.user) {
            *sessions -= 1;
            if *sessions == 0 {
                per_user.remove(&self.user);
            }
        }
        drop(per_user);
        self.admission.held.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_the_instance_and_each_user_and_frees_places_on_drop() {
        let admission = Admission::new(3, 2);
        let alice = [admission.admit("alice").unwrap(), admission.admit("alice").unwrap()];
        assert_eq!(admission.admit("alice").err(), Some(Refused::UserFull));
        let bob = admission.admit("bob").unwrap();
        assert_eq!(admission.admit("carol").err(), Some(Refused::InstanceFull));
        assert_eq!(admission.held(), 3, "refusals hold nothing");
        drop(bob);
        let carol = admission.admit("carol").unwrap();
        drop(alice);
        assert_eq!(admission.held(), 1);
        assert!(admission.admit("alice").is_ok());
        drop(carol);
        assert!(admission.per_user.lock().unwrap().is_empty(), "users with no session leave the map");
    }

    #[test]
    fn zero_means_no_cap_per_user() {
        let admission = Admission::new(100, 0);
        let permits: Vec<Permit> = (0..100).map(|_| admission.admit("busy-kiosk").unwrap()).collect();
        assert_eq!(admission.admit("busy-kiosk").err(), Some(Refused::InstanceFull));
        drop(permits);
        assert_eq!(admission.held(), 0);
    }
}
