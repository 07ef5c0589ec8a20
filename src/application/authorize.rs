//! Connect-time authorization: the local checks that decide the upgrade
//! (signature, `exp`/`nbf`, issuer, `sub`, role, permission).

use std::sync::Arc;

use crate::domain::access::{AccessPolicy, Claims, Denial};

use super::ports::{InvalidToken, TokenVerifier};

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// 401: no token, or one that does not verify.
    Unauthenticated(String),
    /// 403: a valid token without an allowed role or the required permission.
    Forbidden(Denial),
}

pub struct Authorizer {
    verifier: Arc<dyn TokenVerifier>,
    policy: AccessPolicy,
}

impl Authorizer {
    pub fn new(verifier: Arc<dyn TokenVerifier>, policy: AccessPolicy) -> Self {
        Self { verifier, policy }
    }

    pub fn authorize(&self, token: Option<&str>) -> Result<Claims, Refusal> {
        let token =
            token.filter(|token| !token.is_empty()).ok_or_else(|| Refusal::Unauthenticated("no token".into()))?;
        self.check(token).map_err(|refusal| refusal.refusal)
    }

    /// The checks of [`Authorizer::authorize`] on a token that is there,
    /// telling an expired token apart (an in-band refresh reports it).
    pub fn check(&self, token: &str) -> Result<Claims, CheckedRefusal> {
        let claims = self.verifier.verify(token).map_err(|InvalidToken { reason, expired }| CheckedRefusal {
            refusal: Refusal::Unauthenticated(reason),
            expired,
        })?;
        if claims.subject.is_empty() {
            return Err(CheckedRefusal { refusal: Refusal::Unauthenticated("empty sub".into()), expired: false });
        }
        self.policy
            .check(&claims)
            .map_err(|denial| CheckedRefusal { refusal: Refusal::Forbidden(denial), expired: false })?;
        Ok(claims)
    }
}

/// A refusal, and whether it is because the token expired.
#[derive(Debug, PartialEq, Eq)]
pub struct CheckedRefusal {
    pub refusal: Refusal,
    pub expired: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FixedVerifier(Result<Claims, InvalidToken>);

    impl TokenVerifier for FixedVerifier {
        fn verify(&self, _token: &str) -> Result<Claims, InvalidToken> {
            match &self.0 {
                Ok(claims) => Ok(claims.clone()),
                Err(InvalidToken { reason, expired }) => {
                    Err(InvalidToken { reason: reason.clone(), expired: *expired })
                }
            }
        }
    }

    fn authorizer(verified: Result<Claims, InvalidToken>) -> Authorizer {
        Authorizer::new(Arc::new(FixedVerifier(verified)), AccessPolicy::new(vec!["USER".into()], None))
    }

    fn claims(subject: &str, role: &str) -> Claims {
        Claims { subject: subject.into(), roles: vec![role.into()], permissions: vec![], expires_at: None }
    }

    #[test]
    fn refuses_missing_and_invalid_tokens_as_unauthenticated() {
        let ok = authorizer(Ok(claims("u", "USER")));
        assert!(matches!(ok.authorize(None), Err(Refusal::Unauthenticated(_))));
        assert!(matches!(ok.authorize(Some("")), Err(Refusal::Unauthenticated(_))));
        let bad = authorizer(Err(InvalidToken::expired()));
        assert_eq!(bad.authorize(Some("t")), Err(Refusal::Unauthenticated("expired".into())));
        let anonymous = authorizer(Ok(claims("", "USER")));
        assert!(matches!(anonymous.authorize(Some("t")), Err(Refusal::Unauthenticated(_))));
    }

    #[test]
    fn refuses_valid_tokens_without_access_as_forbidden() {
        let admin_only = authorizer(Ok(claims("u", "GUEST")));
        assert_eq!(admin_only.authorize(Some("t")), Err(Refusal::Forbidden(Denial::NoAllowedRole)));
        assert_eq!(authorizer(Ok(claims("u", "USER"))).authorize(Some("t")), Ok(claims("u", "USER")));
    }
}
