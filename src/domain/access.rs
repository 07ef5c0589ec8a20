//! Who may watch a section: the local checks that decide the upgrade. The
//! MesaYa API has the last word through the snapshot call, made with the
//! client's own token.

/// The claims of a verified token that the gateway uses: the MesaYa auth
/// service signs `sub`, `roles`, `permissions` and `exp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub subject: String,
    pub roles: Vec<String>,
    pub permissions: Vec<String>,
    /// `exp` in seconds since the epoch.
    pub expires_at: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    NoAllowedRole,
    MissingPermission,
}

#[derive(Clone, Debug)]
pub struct AccessPolicy {
    allowed_roles: Vec<String>,
    required_permission: Option<String>,
}

impl AccessPolicy {
    pub fn new(allowed_roles: Vec<String>, required_permission: Option<String>) -> Self {
        Self { allowed_roles, required_permission }
    }

    pub fn check(&self, claims: &Claims) -> Result<(), Denial> {
        // Role names are upper-case upstream; compare case-insensitively so
        // `WS_ALLOWED_ROLES=user,owner` does what its author meant.
        let has_role =
            claims.roles.iter().any(|role| self.allowed_roles.iter().any(|allowed| allowed.eq_ignore_ascii_case(role)));
        if !has_role {
            return Err(Denial::NoAllowedRole);
        }
        match &self.required_permission {
            Some(required) if !claims.permissions.iter().any(|p| p == required) => Err(Denial::MissingPermission),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(roles: &[&str], permissions: &[&str]) -> Claims {
        Claims {
            subject: "u1".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
            expires_at: None,
        }
    }

    #[test]
    fn needs_one_allowed_role() {
        let policy = AccessPolicy::new(vec!["OWNER".into(), "ADMIN".into()], None);
        assert_eq!(policy.check(&claims(&["USER"], &[])), Err(Denial::NoAllowedRole));
        assert_eq!(policy.check(&claims(&[], &[])), Err(Denial::NoAllowedRole));
        assert_eq!(policy.check(&claims(&["USER", "owner"], &[])), Ok(()));
    }

    #[test]
    fn needs_the_required_permission_when_configured() {
        let policy = AccessPolicy::new(vec!["USER".into()], Some("section:read".into()));
        assert_eq!(policy.check(&claims(&["USER"], &["table:read"])), Err(Denial::MissingPermission));
        assert_eq!(policy.check(&claims(&["USER"], &["section:read"])), Ok(()));
    }
}
