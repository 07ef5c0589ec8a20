//! Minting JWTs shaped like the MesaYa Auth MS's (`sub`, `email`, `roles`, `permissions`, `iss`, `exp`), signed with HMAC secrets or
//! with the test-only key pairs under `keys/`.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Map, Value, json};

/// Public half of the test RSA key pair used by [`TokenBuilder::rs256`] (PEM, SPKI).
pub const RSA_PUBLIC_PEM: &str = include_str!("../keys/rsa_public.pem");
/// Public half of the test P-256 key pair used by [`TokenBuilder::es256`] (PEM, SPKI).
pub const EC_PUBLIC_PEM: &str = include_str!("../keys/ec_public.pem");
const RSA_PRIVATE_PEM: &str = include_str!("../keys/rsa_private.pem");
const EC_PRIVATE_PEM: &str = include_str!("../keys/ec_private.pem");

/// The issuer the Auth MS puts in `iss`.
pub const ISSUER: &str = "mesaYA-auth";

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock before 1970");
    i64::try_from(since_epoch.as_secs()).expect("clock out of range")
}

/// Claims of a token under construction. Defaults: random `sub`, an `email`, `roles: ["USER"]`,
/// `iss: "mesaYA-auth"`, `iat: now`, `exp: now + 1h`.
#[derive(Clone, Debug)]
pub struct TokenBuilder {
    claims: Map<String, Value>,
}

impl Default for TokenBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenBuilder {
    pub fn new() -> Self {
        let sub = uuid::Uuid::new_v4().to_string();
        let issued_at = now();
        let claims = json!({
            "email": format!("diner-{}@mesaya.test", &sub[..8]),
            "sub": sub,
            "roles": ["USER"],
            "iss": ISSUER,
            "iat": issued_at,
            "exp": issued_at + 3600,
        });
        let Value::Object(claims) = claims else { unreachable!() };
        Self { claims }
    }

    #[expect(clippy::should_implement_trait, reason = "named after the `sub` claim")]
    pub fn sub(self, sub: impl Into<String>) -> Self {
        self.claim("sub", Value::String(sub.into()))
    }

    pub fn email(self, email: impl Into<String>) -> Self {
        self.claim("email", Value::String(email.into()))
    }

    pub fn roles(self, roles: &[&str]) -> Self {
        self.claim("roles", json!(roles))
    }

    pub fn permissions(self, permissions: &[&str]) -> Self {
        self.claim("permissions", json!(permissions))
    }

    pub fn iss(self, issuer: impl Into<String>) -> Self {
        self.claim("iss", Value::String(issuer.into()))
    }

    /// Expiry as Unix seconds.
    pub fn exp(self, unix_seconds: i64) -> Self {
        self.claim("exp", json!(unix_seconds))
    }

    /// Expiry relative to now; negative for an already expired token.
    pub fn expires_in(self, seconds: i64) -> Self {
        self.exp(now() + seconds)
    }

    /// Not-before as Unix seconds.
    pub fn nbf(self, unix_seconds: i64) -> Self {
        self.claim("nbf", json!(unix_seconds))
    }

    /// Sets any claim to any JSON value (e.g. a wrongly typed `roles`).
    pub fn claim(mut self, name: &str, value: Value) -> Self {
        self.claims.insert(name.to_owned(), value);
        self
    }

    /// Removes a claim (e.g. a token without `sub` or `exp`).
    pub fn without(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }

    pub fn hs256(&self, secret: &str) -> String {
        self.sign(Algorithm::HS256, &EncodingKey::from_secret(secret.as_bytes()))
    }

    pub fn hs384(&self, secret: &str) -> String {
        self.sign(Algorithm::HS384, &EncodingKey::from_secret(secret.as_bytes()))
    }

    pub fn hs512(&self, secret: &str) -> String {
        self.sign(Algorithm::HS512, &EncodingKey::from_secret(secret.as_bytes()))
    }

    /// Signed with the test RSA key; verify with [`RSA_PUBLIC_PEM`].
    pub fn rs256(&self) -> String {
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE_PEM.as_bytes()).expect("test RSA key");
        self.sign(Algorithm::RS256, &key)
    }

    /// Signed with the test P-256 key; verify with [`EC_PUBLIC_PEM`].
    pub fn es256(&self) -> String {
        let key = EncodingKey::from_ec_pem(EC_PRIVATE_PEM.as_bytes()).expect("test EC key");
        self.sign(Algorithm::ES256, &key)
    }

    fn sign(&self, algorithm: Algorithm, key: &EncodingKey) -> String {
        encode(&Header::new(algorithm), &self.claims, key).expect("cannot sign token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode};

    fn verify(token: &str, algorithm: Algorithm, key: &DecodingKey) -> Map<String, Value> {
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        decode::<Map<String, Value>>(token, key, &validation).expect("token should verify").claims
    }

    #[test]
    fn defaults_look_like_the_auth_ms() {
        let builder = TokenBuilder::new();
        let claims = verify(&builder.hs256("s3cret"), Algorithm::HS256, &DecodingKey::from_secret(b"s3cret"));
        assert_eq!(&claims, builder.claims());
        assert_eq!(claims["roles"], json!(["USER"]));
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 3600);
        assert!(uuid::Uuid::parse_str(claims["sub"].as_str().unwrap()).is_ok());
        assert!(claims["email"].as_str().unwrap().contains('@'));
    }

    #[test]
    fn hmac_variants_verify_with_their_algorithm() {
        let builder = TokenBuilder::new();
        let key = DecodingKey::from_secret(b"k");
        verify(&builder.hs384("k"), Algorithm::HS384, &key);
        verify(&builder.hs512("k"), Algorithm::HS512, &key);
    }

    #[test]
    fn rs256_verifies_with_the_public_pem() {
        let token = TokenBuilder::new().roles(&["OWNER"]).permissions(&["section:read"]).rs256();
        let key = DecodingKey::from_rsa_pem(RSA_PUBLIC_PEM.as_bytes()).unwrap();
        let claims = verify(&token, Algorithm::RS256, &key);
        assert_eq!(claims["roles"], json!(["OWNER"]));
        assert_eq!(claims["permissions"], json!(["section:read"]));
    }

    #[test]
    fn es256_verifies_with_the_public_pem() {
        let token = TokenBuilder::new().sub("user-1").es256();
        let key = DecodingKey::from_ec_pem(EC_PUBLIC_PEM.as_bytes()).unwrap();
        assert_eq!(verify(&token, Algorithm::ES256, &key)["sub"], "user-1");
    }

    #[test]
    fn expired_and_stripped_claims_are_encoded_as_asked() {
        let builder = TokenBuilder::new().expires_in(-60).without("sub").nbf(5);
        assert!(builder.claims()["exp"].as_i64().unwrap() < now());
        assert!(!builder.claims().contains_key("sub"));
        assert_eq!(builder.claims()["nbf"], 5);
    }
}
