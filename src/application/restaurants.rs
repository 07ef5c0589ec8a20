//! Restaurants as Kafka and snapshots tell them: which restaurant each
//! section belongs to (restaurant events reach its sections) and who owns
//! each restaurant (its owner is staff there, SPEC §2.7). The ingest thread
//! writes it, from events and at start from the retained topics; a shard
//! reads one section's owner when it decides a connection's audience.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::domain::audience::UserId;
use crate::domain::ids::{EntityId, SectionId};

use super::floor::remove_from;
use super::ports::RestaurantOwners;

#[derive(Default)]
pub struct Restaurants {
    section_restaurant: HashMap<SectionId, EntityId>,
    /// restaurant → its sections.
    restaurant_sections: HashMap<EntityId, HashSet<SectionId>>,
    /// restaurant → its `ownerId`.
    owners: HashMap<EntityId, UserId>,
}

impl Restaurants {
    /// `section` belongs to `restaurant` (and to no other any more).
    pub fn link(&mut self, section: SectionId, restaurant: EntityId) {
        if let Some(old) = self.section_restaurant.insert(section, restaurant.clone()) {
            remove_from(&mut self.restaurant_sections, &old, &section);
        }
        self.restaurant_sections.entry(restaurant).or_default().insert(section);
    }

    /// A deleted section belongs to no restaurant.
    pub fn unlink(&mut self, section: SectionId) {
        if let Some(restaurant) = self.section_restaurant.remove(&section) {
            remove_from(&mut self.restaurant_sections, &restaurant, &section);
        }
    }

    /// The sections of `restaurant` the gateway knows.
    pub fn sections_of(&self, restaurant: &EntityId) -> Vec<SectionId> {
        self.restaurant_sections.get(restaurant).into_iter().flatten().copied().collect()
    }

    /// What a restaurant event says of its owner: an event without
    /// `ownerId` keeps the one known.
    pub fn set_owner(&mut self, restaurant: EntityId, owner: Option<UserId>) {
        if let Some(owner) = owner {
            self.owners.insert(restaurant, owner);
        }
    }

    /// A deleted restaurant: its owner and its sections are forgotten.
    pub fn forget(&mut self, restaurant: &EntityId) -> Vec<SectionId> {
        self.owners.remove(restaurant);
        let sections: Vec<SectionId> = self.restaurant_sections.remove(restaurant).into_iter().flatten().collect();
        for section in &sections {
            self.section_restaurant.remove(section);
        }
        sections
    }

    fn owner(&self, section: SectionId, restaurant: Option<&EntityId>) -> Option<&UserId> {
        let restaurant = restaurant.or_else(|| self.section_restaurant.get(&section))?;
        self.owners.get(restaurant)
    }

    /// (restaurants with sections, restaurants with owners), for gauges.
    pub fn counts(&self) -> (usize, usize) {
        (self.restaurant_sections.len(), self.owners.len())
    }
}

/// Shared between the ingest thread (writes, once per section or restaurant
/// event) and the shards (read once per connect): never on the fan-out path.
#[derive(Clone, Default)]
pub struct SharedRestaurants(Arc<RwLock<Restaurants>>);

impl SharedRestaurants {
    pub fn read(&self) -> RwLockReadGuard<'_, Restaurants> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn write(&self) -> RwLockWriteGuard<'_, Restaurants> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl RestaurantOwners for SharedRestaurants {
    fn restaurant_of(&self, section: SectionId) -> Option<EntityId> {
        self.read().section_restaurant.get(&section).cloned()
    }

    fn owner_of(&self, section: SectionId, restaurant: Option<&EntityId>) -> Option<UserId> {
        self.read().owner(section, restaurant).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: &str = "11111111-1111-4111-8111-111111111111";
    const OWNER: &str = "0a111111-1111-4111-8111-111111111111";

    fn section() -> SectionId {
        SectionId::parse(S1).unwrap()
    }

    #[test]
    fn a_section_is_owned_by_its_restaurants_owner_until_the_restaurant_goes() {
        let restaurants = SharedRestaurants::default();
        let (r1, r2): (EntityId, EntityId) = ("r1".into(), "r2".into());
        assert_eq!(restaurants.owner_of(section(), None), None, "an unknown restaurant has no owner");
        restaurants.write().link(section(), r1.clone());
        assert_eq!(restaurants.owner_of(section(), None), None, "its owner is not known yet");
        restaurants.write().set_owner(r1.clone(), Some(UserId::new(OWNER)));
        restaurants.write().set_owner(r1.clone(), None);
        assert_eq!(restaurants.owner_of(section(), None), Some(UserId::new(OWNER)));
        assert_eq!(restaurants.owner_of(section(), Some(&r2)), None, "the snapshot's restaurant wins");

        assert_eq!(restaurants.write().forget(&r1), vec![section()]);
        assert_eq!(restaurants.owner_of(section(), None), None);
        assert_eq!(restaurants.read().counts(), (0, 0), "nothing of it is left");
    }

    #[test]
    fn a_section_moved_to_another_restaurant_leaves_the_first() {
        let mut restaurants = Restaurants::default();
        restaurants.link(section(), "r1".into());
        restaurants.link(section(), "r2".into());
        assert!(restaurants.sections_of(&"r1".into()).is_empty());
        restaurants.unlink(section());
        assert_eq!(restaurants.counts(), (0, 0));
    }
}
