//! In-band token refresh (SPEC §2.8): what an `auth.refresh` does to a
//! connection. The new token is checked as at the upgrade, must carry the
//! connection's `sub`, and then moves the connection's expiry and decides
//! its audience again (SPEC §2.7). No REST call, ever; the token is never
//! logged.

use crate::domain::audience::{Audience, StaffRoles, UserId};
use crate::domain::ids::SectionId;
use crate::telemetry::METRICS;

use super::authorize::{Authorizer, Refusal};
use super::ports::RestaurantOwners;

/// Why a refresh was refused; each is the `reason` of `auth.refresh_failed`
/// and a metric label. The connection's old expiry stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshFailure {
    Expired,
    /// Missing, malformed, badly signed, wrong issuer, no `sub`.
    Invalid,
    /// A good token of another user.
    OtherUser,
    /// A good token without an allowed role or the required permission.
    Forbidden,
}

impl RefreshFailure {
    pub fn label(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Invalid => "invalid",
            Self::OtherUser => "other_user",
            Self::Forbidden => "forbidden",
        }
    }
}

/// A refresh that took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refreshed {
    /// The new token's `exp`: the connection now ends then.
    pub expires_at: u64,
    pub audience: Audience,
}

/// What a refresh is checked against.
pub struct RefreshRules<'a, O> {
    pub authorizer: &'a Authorizer,
    pub staff_roles: &'a StaffRoles,
    pub owners: &'a O,
}

/// Checks `token` for the connection of `holder` on `section`.
pub fn refresh<O: RestaurantOwners>(
    rules: &RefreshRules<'_, O>,
    section: SectionId,
    holder: &UserId,
    token: Option<&str>,
) -> Result<Refreshed, RefreshFailure> {
    let token = token.ok_or(RefreshFailure::Invalid)?;
    let claims = rules.authorizer.check(token).map_err(|refused| match refused.refusal {
        _ if refused.expired => RefreshFailure::Expired,
        Refusal::Unauthenticated(_) => RefreshFailure::Invalid,
        Refusal::Forbidden(_) => RefreshFailure::Forbidden,
    })?;
    let viewer = rules.staff_roles.viewer(&claims);
    if &viewer.subject != holder {
        return Err(RefreshFailure::OtherUser);
    }
    // A token without `exp` never verifies: it is a required claim.
    let expires_at = claims.expires_at.ok_or(RefreshFailure::Invalid)?;
    let owner = rules.owners.owner_of(section, rules.owners.restaurant_of(section).as_ref());
    Ok(Refreshed { expires_at, audience: viewer.audience(owner.as_ref()) })
}

/// A client refreshed its token in band, or tried to. The token itself is
/// never logged.
pub struct TokenRefreshed {
    pub outcome: Result<u64, RefreshFailure>,
}

impl TokenRefreshed {
    pub fn emit(self) {
        let label = self.outcome.map_or_else(RefreshFailure::label, |_| "refreshed");
        METRICS.token_refreshes.with_label_values(&[label]).inc();
        match self.outcome {
            Ok(expires_at) => tracing::info!(expires_at, "token refreshed in band"),
            Err(failure) => tracing::info!(reason = failure.label(), "token refresh refused"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::application::ports::{InvalidToken, TokenVerifier};
    use crate::domain::access::{AccessPolicy, Claims};
    use crate::domain::ids::EntityId;

    const OWNER: &str = "0a111111-1111-4111-8111-111111111111";
    const S1: &str = "11111111-1111-4111-8111-111111111111";

    /// Tokens in the clear: `sub|role|exp`, `expired`, or anything else (invalid).
    struct PlainVerifier;

    impl TokenVerifier for PlainVerifier {
        fn verify(&self, token: &str) -> Result<Claims, InvalidToken> {
            if token == "expired" {
                return Err(InvalidToken::expired());
            }
            let [sub, role, exp] = token.split('|').collect::<Vec<_>>()[..] else {
                return Err(InvalidToken::new("malformed"));
            };
            Ok(Claims {
                subject: sub.into(),
                roles: vec![role.into()],
                permissions: vec![],
                expires_at: exp.parse().ok(),
            })
        }
    }

    /// Every section is of a restaurant that OWNER owns.
    struct Owned;

    impl RestaurantOwners for Owned {
        fn restaurant_of(&self, _section: SectionId) -> Option<EntityId> {
            Some("r1".into())
        }

        fn owner_of(&self, _section: SectionId, restaurant: Option<&EntityId>) -> Option<UserId> {
            restaurant.map(|_| UserId::new(OWNER))
        }
    }

    fn attempt(holder: &str, token: Option<&str>) -> Result<Refreshed, RefreshFailure> {
        let authorizer = Authorizer::new(
            Arc::new(PlainVerifier),
            AccessPolicy::new(vec!["USER".into(), "OWNER".into(), "ADMIN".into()], None),
        );
        let staff_roles = StaffRoles::new(vec!["ADMIN".into()]);
        let rules = RefreshRules { authorizer: &authorizer, staff_roles: &staff_roles, owners: &Owned };
        refresh(&rules, SectionId::parse(S1).unwrap(), &UserId::new(holder), token)
    }

    #[test]
    fn a_good_token_of_the_same_user_moves_the_expiry_and_decides_the_audience_again() {
        let diner = "22222222-1111-4111-8111-111111111111";
        assert_eq!(
            attempt(diner, Some(&format!("{diner}|USER|2000"))),
            Ok(Refreshed { expires_at: 2000, audience: Audience::Public { viewer: UserId::new(diner) } })
        );
        assert_eq!(attempt(diner, Some(&format!("{diner}|ADMIN|2100"))).unwrap().audience, Audience::Staff);
        let shouted = OWNER.to_uppercase();
        assert_eq!(attempt(OWNER, Some(&format!("{shouted}|OWNER|2200"))).unwrap().audience, Audience::Staff);
    }

    #[test]
    fn every_failure_has_its_reason() {
        let diner = "22222222-1111-4111-8111-111111111111";
        assert_eq!(attempt(diner, Some("expired")), Err(RefreshFailure::Expired));
        assert_eq!(attempt(diner, Some("garbage")), Err(RefreshFailure::Invalid));
        assert_eq!(attempt(diner, None), Err(RefreshFailure::Invalid), "a refresh frame without a token");
        assert_eq!(attempt(diner, Some(&format!("{OWNER}|USER|2000"))), Err(RefreshFailure::OtherUser));
        assert_eq!(attempt(diner, Some(&format!("{diner}|GUEST|2000"))), Err(RefreshFailure::Forbidden));
        assert_eq!(attempt(diner, Some(&format!("{diner}|USER|never"))), Err(RefreshFailure::Invalid), "no exp");
    }
}
