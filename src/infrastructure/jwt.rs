//! Token verification with `jsonwebtoken`: HMAC keys from
//! `JWT_SECRET`, RSA/EC/Ed25519 public keys from `JWT_PUBLIC_KEY`. When both
//! are set, the token header's `alg` picks the key.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use crate::application::ports::{InvalidToken, TokenVerifier};
use crate::domain::access::Claims;

use crate::config::{ConfigError, JwtSettings};

struct KeyedValidation {
    key: DecodingKey,
    validation: Validation,
}

pub struct JwtVerifier {
    hmac: Option<KeyedValidation>,
    public: Option<KeyedValidation>,
}

#[derive(Deserialize)]
struct TokenClaims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    permissions: Vec<String>,
    exp: Option<u64>,
}

fn validation(algorithms: &[Algorithm], settings: &JwtSettings) -> Validation {
    let mut validation = Validation::new(algorithms[0]);
    validation.algorithms = algorithms.to_vec();
    validation.leeway = settings.leeway.as_secs();
    validation.validate_nbf = true;
    validation.validate_aud = false;
    if let Some(issuer) = &settings.issuer {
        validation.set_issuer(&[issuer]);
        // jsonwebtoken checks `iss` only when the token has one, so a token
        // without it would pass: with JWT_ISSUER set it must be present too.
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
    } else {
        validation.set_required_spec_claims(&["exp", "sub"]);
    }
    validation
}

impl JwtVerifier {
    pub fn new(settings: &JwtSettings) -> Result<Self, ConfigError> {
        let hmac = settings.secret.as_ref().map(|secret| KeyedValidation {
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation: validation(&[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512], settings),
        });
        let public = settings.public_key_pem.as_ref().map(|pem| public_key(pem.as_bytes(), settings)).transpose()?;
        Ok(Self { hmac, public })
    }
}

fn public_key(pem: &[u8], settings: &JwtSettings) -> Result<KeyedValidation, ConfigError> {
    use Algorithm::*;
    let (key, algorithms) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        (key, vec![RS256, RS384, RS512, PS256, PS384, PS512])
    } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        (key, vec![ES256, ES384])
    } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        (key, vec![EdDSA])
    } else {
        return Err(ConfigError::new("JWT_PUBLIC_KEY", "not a PEM-encoded RSA, EC or Ed25519 public key"));
    };
    Ok(KeyedValidation { key, validation: validation(&algorithms, settings) })
}

impl TokenVerifier for JwtVerifier {
    fn verify(&self, token: &str) -> Result<Claims, InvalidToken> {
        let header = decode_header(token).map_err(|e| InvalidToken::new(format!("malformed: {e}")))?;
        let keyed = [&self.hmac, &self.public]
            .into_iter()
            .flatten()
            .find(|keyed| keyed.validation.algorithms.contains(&header.alg))
            .ok_or_else(|| InvalidToken::new(format!("algorithm {:?} not accepted", header.alg)))?;
        let data = decode::<TokenClaims>(token, &keyed.key, &keyed.validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => InvalidToken::expired(),
            _ => InvalidToken::new(e.to_string()),
        })?;
        Ok(Claims {
            subject: data.claims.sub,
            roles: data.claims.roles,
            permissions: data.claims.permissions,
            expires_at: data.claims.exp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    const SECRET: &str = "test-secret-of-some-length";

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn settings(issuer: Option<&str>) -> JwtSettings {
        JwtSettings {
            secret: Some(SECRET.into()),
            public_key_pem: None,
            issuer: issuer.map(str::to_string),
            leeway: Duration::from_secs(5),
        }
    }

    fn token(alg: Algorithm, claims: serde_json::Value) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    #[test]
    fn accepts_every_hmac_size_and_reads_the_claims() {
        let verifier = JwtVerifier::new(&settings(None)).unwrap();
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let claims = verifier
                .verify(&token(alg, serde_json::json!({"sub": "u1", "roles": ["USER"], "permissions": ["section:read"], "exp": now() + 60})))
                .unwrap();
            assert_eq!(claims.subject, "u1");
            assert_eq!(claims.roles, vec!["USER"]);
            assert_eq!(claims.permissions, vec!["section:read"]);
        }
    }

    #[test]
    fn applies_expiry_with_leeway_nbf_and_issuer() {
        let verifier = JwtVerifier::new(&settings(Some("mesaYA-auth"))).unwrap();
        let ok = |extra: serde_json::Value| {
            let mut claims = serde_json::json!({"sub": "u", "iss": "mesaYA-auth", "exp": now() + 60});
            claims.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            verifier.verify(&token(Algorithm::HS256, claims)).is_ok()
        };
        assert!(ok(serde_json::json!({})));
        assert!(ok(serde_json::json!({"exp": now() - 2})), "inside the 5 s leeway");
        assert!(!ok(serde_json::json!({"exp": now() - 30})));
        assert!(!ok(serde_json::json!({"nbf": now() + 60})));
        assert!(!ok(serde_json::json!({"iss": "someone-else"})));
        assert!(
            verifier.verify(&token(Algorithm::HS256, serde_json::json!({"sub": "u", "iss": "mesaYA-auth"}))).is_err(),
            "exp is required"
        );
        assert!(
            verifier.verify(&token(Algorithm::HS256, serde_json::json!({"sub": "u", "exp": now() + 60}))).is_err(),
            "iss is required when configured"
        );
        let open = JwtVerifier::new(&settings(None)).unwrap();
        assert!(
            open.verify(&token(Algorithm::HS256, serde_json::json!({"sub": "u", "exp": now() + 60}))).is_ok(),
            "and only then"
        );
    }

    #[test]
    fn rejects_wrong_signatures_and_garbage() {
        let verifier = JwtVerifier::new(&settings(None)).unwrap();
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "u", "exp": now() + 60}),
            &EncodingKey::from_secret(b"another-secret"),
        )
        .unwrap();
        assert!(verifier.verify(&forged).is_err());
        assert!(verifier.verify("not.a.jwt").is_err());
        assert!(verifier.verify("").is_err());
    }

    #[test]
    fn a_malformed_public_key_is_a_config_error() {
        let mut settings = settings(None);
        settings.public_key_pem = Some("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----".into());
        let error = JwtVerifier::new(&settings).err().unwrap();
        assert_eq!(error.variable, "JWT_PUBLIC_KEY");
    }
}
