//! Who sees what (SPEC §2.7). The API's section endpoint is public, so the
//! gateway itself decides what each connection may see: a reservation's
//! personal fields (`userId`, `userName`, `userEmail`) reach only the
//! restaurant's staff and the diner who made it, and a restaurant's
//! business fields (`ownerId`, `subscriptionId`, `adminNote`) only staff.
//!
//! Each event's frames are built once per variant ([`Variants`]); the shard
//! picks one per subscriber by its [`Audience`].

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::access::Claims;
use super::entity::{Action, EntityKind};
use super::frame::Frame;

/// A user as tokens (`sub`) and entities (`userId`, `ownerId`) name one. A
/// UUID is kept in one canonical spelling (lower case, hyphenated), so that
/// `sub` and `userId` written differently still name the same person.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct UserId(Arc<str>);

impl UserId {
    pub fn new(text: &str) -> Self {
        match uuid::Uuid::try_parse(text) {
            Ok(uuid) => Self(uuid.hyphenated().to_string().into()),
            Err(_) => Self(text.into()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a connection may see, decided at connect, resume and refresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    /// The restaurant's staff: every frame exactly as it came.
    Staff,
    /// Everyone else: personal fields cut, except from this user's own
    /// reservations.
    Public { viewer: UserId },
}

impl Audience {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Staff => "staff",
            Self::Public { .. } => "public",
        }
    }
}

/// What of a token decides its audience; kept from connect until the
/// audience is decided, instead of the whole claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Viewer {
    pub subject: UserId,
    /// Holds a role of `WS_STAFF_ROLES`: staff of every restaurant.
    pub staff_role: bool,
    /// Holds the role `OWNER`: staff of the restaurants it owns.
    pub owner_role: bool,
}

impl Viewer {
    /// The audience of this viewer on a section whose restaurant is owned
    /// by `owner` (`None`: not known to the gateway, so owned by nobody).
    pub fn audience(&self, owner: Option<&UserId>) -> Audience {
        let owns = self.owner_role && owner == Some(&self.subject);
        if self.staff_role || owns { Audience::Staff } else { Audience::Public { viewer: self.subject.clone() } }
    }
}

/// The roles that make a token staff everywhere (`WS_STAFF_ROLES`).
#[derive(Clone, Debug)]
pub struct StaffRoles(Vec<String>);

/// The role whose holder is staff of the restaurants it owns.
const OWNER_ROLE: &str = "OWNER";

impl StaffRoles {
    pub fn new(roles: Vec<String>) -> Self {
        Self(roles)
    }

    /// Role names compare case-insensitively, as in the access policy.
    pub fn viewer(&self, claims: &Claims) -> Viewer {
        let has = |wanted: &str| claims.roles.iter().any(|role| role.eq_ignore_ascii_case(wanted));
        Viewer {
            subject: UserId::new(&claims.subject),
            staff_role: self.0.iter().any(|staff| has(staff)),
            owner_role: has(OWNER_ROLE),
        }
    }
}

/// The top-level fields of an entity that everyone may see: an allowlist,
/// so a field the upstream adds later stays private until it is listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicFields(Vec<String>);

/// `WS_PUBLIC_RESERVATION_FIELDS`' default.
pub const DEFAULT_PUBLIC_RESERVATION_FIELDS: &str =
    "id,restaurantId,tableId,reservationDate,reservationTime,numberOfGuests,status,createdAt,updatedAt";

/// The restaurant fields everyone sees (SPEC §2.7): no `ownerId`,
/// `subscriptionId` or `adminNote`.
pub const PUBLIC_RESTAURANT_FIELDS: &str =
    "id,name,description,location,openTime,closeTime,daysOpen,totalCapacity,imageId,status,active,createdAt,updatedAt";

impl PublicFields {
    pub fn new(fields: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self(fields.into_iter().map(Into::into).collect())
    }

    /// A comma-separated list.
    pub fn parse(list: &str) -> Self {
        Self::new(list.split(',').map(str::trim).filter(|field| !field.is_empty()))
    }

    fn allows(&self, field: &str) -> bool {
        self.0.iter().any(|allowed| allowed == field)
    }

    /// `entity_json` with only the allowed top-level fields, in their
    /// order; `None` when it has no other field (nothing to cut). Text that
    /// is not a JSON object cuts to `{}`: nothing of it is known to be public.
    pub fn cut(&self, entity_json: &str) -> Option<String> {
        let Ok(fields) = parse_fields(entity_json) else { return Some("{}".into()) };
        if fields.iter().all(|(name, _)| self.allows(name)) {
            return None;
        }
        let mut cut = String::with_capacity(entity_json.len());
        cut.push('{');
        for (name, value) in fields.iter().filter(|(name, _)| self.allows(name)) {
            if cut.len() > 1 {
                cut.push(',');
            }
            // Allowed names are plain field names: written back quoted.
            cut.push_str(&serde_json::to_string(name).expect("a string always serializes"));
            cut.push(':');
            cut.push_str(value.get());
        }
        cut.push('}');
        Some(cut)
    }
}

/// An object's top-level fields in their order, each value as its raw text.
fn parse_fields(json: &str) -> Result<Vec<(Cow<'_, str>, &RawValue)>, serde_json::Error> {
    struct Fields;

    impl<'de> Visitor<'de> for Fields {
        type Value = Vec<(Cow<'de, str>, &'de RawValue)>;

        fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
            formatter.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(16));
            while let Some(field) = map.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                fields.push(field);
            }
            Ok(fields)
        }
    }

    let mut deserializer = serde_json::Deserializer::from_str(json);
    let fields = (&mut deserializer).deserialize_map(Fields)?;
    deserializer.end()?;
    Ok(fields)
}

/// The allowlists of the two kinds whose payloads carry private fields.
#[derive(Clone, Debug)]
pub struct Disclosure {
    pub reservation: PublicFields,
    pub restaurant: PublicFields,
}

impl Default for Disclosure {
    fn default() -> Self {
        Self {
            reservation: PublicFields::parse(DEFAULT_PUBLIC_RESERVATION_FIELDS),
            restaurant: PublicFields::parse(PUBLIC_RESTAURANT_FIELDS),
        }
    }
}

impl Disclosure {
    /// An event's frames: the full one, and for the kinds with private
    /// fields the public one when it differs. `diner` is a reservation's
    /// `userId`: that user gets the full frame.
    pub fn frames(&self, kind: EntityKind, action: Action, payload: &str, diner: Option<&UserId>) -> Variants {
        let full = Frame::event(kind, action, payload);
        let allowed = match kind {
            EntityKind::Reservation => &self.reservation,
            EntityKind::Restaurant => &self.restaurant,
            _ => return Variants::from(full),
        };
        let public = allowed.cut(payload).map(|cut| Frame::event(kind, action, &cut));
        let diner = diner.filter(|_| public.is_some() && kind == EntityKind::Reservation).cloned();
        Variants { full, public, diner }
    }
}

/// One event's frames, built once on the ingest thread and shared by every
/// subscriber; [`Variants::for_audience`] picks a subscriber's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Variants {
    full: Frame,
    /// `None`: everyone gets `full` (the event has no private fields).
    public: Option<Frame>,
    /// The diner whose reservation this is: gets `full` though public.
    diner: Option<UserId>,
}

impl From<Frame> for Variants {
    /// One frame for every audience.
    fn from(full: Frame) -> Self {
        Self { full, public: None, diner: None }
    }
}

impl Variants {
    pub fn for_audience(&self, audience: &Audience) -> &Frame {
        match (audience, &self.public) {
            (Audience::Public { viewer }, Some(public)) if self.diner.as_ref() != Some(viewer) => public,
            _ => &self.full,
        }
    }

    /// The frame staff get.
    pub fn full(&self) -> &Frame {
        &self.full
    }

    /// Whether public viewers get less than staff.
    pub fn is_cut(&self) -> bool {
        self.public.is_some()
    }

    /// The same variants, each frame passed through `each` (to add its
    /// compressed form).
    pub fn map_frames(self, mut each: impl FnMut(Frame) -> Frame) -> Self {
        Self { full: each(self.full), public: self.public.map(each), diner: self.diner }
    }

    /// Bytes of every variant: what keeping this event costs.
    pub fn bytes(&self) -> usize {
        self.full.held_bytes() + self.public.as_ref().map_or(0, Frame::held_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DINER: &str = "11111111-2222-4333-8444-555555555555";
    const RESERVATION: &str = r#"{"id":"r1","restaurantId":"x","userId":"11111111-2222-4333-8444-555555555555","tableId":"t1","userEmail":"a@b.c","status":"PENDING","updatedAt":"2026-01-10T18:00:00.000Z"}"#;

    fn payload(frame: &Frame) -> serde_json::Value {
        let parsed: serde_json::Value = serde_json::from_slice(frame.utf8_bytes()).unwrap();
        parsed["payload"].clone()
    }

    #[test]
    fn a_cut_keeps_the_allowed_fields_in_order_and_nothing_else() {
        let fields = PublicFields::parse(DEFAULT_PUBLIC_RESERVATION_FIELDS);
        assert_eq!(
            fields.cut(RESERVATION).unwrap(),
            r#"{"id":"r1","restaurantId":"x","tableId":"t1","status":"PENDING","updatedAt":"2026-01-10T18:00:00.000Z"}"#
        );
        assert_eq!(fields.cut(r#"{"id":"r1","status":"PENDING"}"#), None, "nothing private: nothing to cut");
        assert_eq!(fields.cut("[1,2]").as_deref(), Some("{}"));
        assert_eq!(fields.cut(r#"{"userId":"u"}"#).as_deref(), Some("{}"));
        assert_eq!(
            fields.cut(r#"{ "id" : {"userId":"nested"} , "x\u0041":1 }"#).as_deref(),
            Some(r#"{"id":{"userId":"nested"}}"#),
            "values are kept whole; escaped names are compared unescaped"
        );
    }

    #[test]
    fn public_viewers_get_the_cut_except_from_their_own_reservation() {
        let disclosure = Disclosure::default();
        let diner = UserId::new(DINER);
        let frames = disclosure.frames(EntityKind::Reservation, Action::Created, RESERVATION, Some(&diner));
        let other = Audience::Public { viewer: UserId::new("99999999-2222-4333-8444-555555555555") };
        let own = Audience::Public { viewer: UserId::new(&DINER.to_uppercase()) };
        assert_eq!(payload(frames.for_audience(&other)).get("userId"), None);
        assert_eq!(payload(frames.for_audience(&other)).get("userEmail"), None);
        assert_eq!(payload(frames.for_audience(&own))["userId"], DINER, "the same UUID, spelled otherwise");
        assert_eq!(frames.for_audience(&Audience::Staff), frames.full());
        assert!(frames.is_cut());
    }

    #[test]
    fn restaurant_business_fields_are_for_staff_only() {
        let restaurant =
            r#"{"id":"x","name":"Casa","ownerId":"o","subscriptionId":"s","adminNote":"late payer","active":true}"#;
        let frames = Disclosure::default().frames(EntityKind::Restaurant, Action::Updated, restaurant, None);
        let public = payload(frames.for_audience(&Audience::Public { viewer: UserId::new("o") }));
        assert_eq!(public, serde_json::json!({"id": "x", "name": "Casa", "active": true}));
        assert_eq!(payload(frames.full())["adminNote"], "late payer");
    }

    #[test]
    fn other_kinds_build_one_frame() {
        let frames =
            Disclosure::default().frames(EntityKind::Table, Action::Updated, r#"{"id":"t","userId":"u"}"#, None);
        assert!(!frames.is_cut());
        assert_eq!(frames.bytes(), frames.full().len());
    }

    #[test]
    fn staff_are_staff_roles_and_owners_of_the_restaurant() {
        let staff = StaffRoles::new(vec!["ADMIN".into(), "host".into()]);
        let claims = |roles: &[&str]| Claims {
            subject: DINER.into(),
            roles: roles.iter().map(|role| role.to_string()).collect(),
            permissions: vec![],
            expires_at: None,
        };
        let owner = UserId::new(DINER);
        let someone_else = UserId::new("99999999-2222-4333-8444-555555555555");
        assert_eq!(staff.viewer(&claims(&["admin"])).audience(None), Audience::Staff);
        assert_eq!(staff.viewer(&claims(&["HOST"])).audience(None), Audience::Staff);
        assert_eq!(staff.viewer(&claims(&["OWNER"])).audience(Some(&owner)), Audience::Staff);
        assert!(matches!(staff.viewer(&claims(&["OWNER"])).audience(Some(&someone_else)), Audience::Public { .. }));
        assert!(matches!(staff.viewer(&claims(&["OWNER"])).audience(None), Audience::Public { .. }), "unknown owner");
        assert!(matches!(staff.viewer(&claims(&["USER"])).audience(Some(&owner)), Audience::Public { .. }));
    }
}
