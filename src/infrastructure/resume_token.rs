//! Resume tokens signed with `RESUME_SECRET` (HMAC-SHA256), as compact
//! URL-safe text: base64url, no padding, of
//!
//! | bytes | field |
//! |---|---|
//! | 1 | format version (2) |
//! | 8 | issue time, seconds since the Unix epoch, big-endian |
//! | 8 | when the chain of resumes began (its snapshot), the same way |
//! | 16 | section id |
//! | 8 | tag of the user's `sub` (keyed, so the token does not reveal it) |
//! | varint | number of partitions, then per partition: topic tag (4, big-endian), partition (varint), next offset (varint) |
//! | 16 | HMAC-SHA256 of everything before, truncated |
//!
//! Every instance behind one load balancer shares the secret, so any of
//! them reads a token any of them issued. Tokens of version 1 (no chain
//! start) are refused: their client gets a snapshot, once.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::application::ports::{InvalidResumeToken, OpenedToken, ResumeGrant, ResumeTokens, TooManyPartitions};
use crate::domain::ids::SectionId;
use crate::domain::position::{PartitionId, Positions};

const VERSION: u8 = 2;
const SUB_TAG_BYTES: usize = 8;
const MAC_BYTES: usize = 16;
/// Longer text is refused before decoding (a token holds a few dozen
/// partitions at most), and never issued.
const MAX_TOKEN_CHARS: usize = 4096;

pub struct HmacResumeTokens {
    secret: Vec<u8>,
}

impl HmacResumeTokens {
    pub fn new(secret: &str) -> Self {
        Self { secret: secret.as_bytes().to_vec() }
    }

    fn mac(&self, domain: &[u8], data: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes a key of any length");
        mac.update(domain);
        mac.update(data);
        mac
    }

    fn sub_tag(&self, sub: &str) -> [u8; SUB_TAG_BYTES] {
        let digest = self.mac(b"sub\0", sub.as_bytes()).finalize().into_bytes();
        digest[..SUB_TAG_BYTES].try_into().expect("a SHA-256 digest is longer than the tag")
    }
}

impl ResumeTokens for HmacResumeTokens {
    fn issue(&self, grant: &ResumeGrant<'_>) -> Result<String, TooManyPartitions> {
        let mut bytes = Vec::with_capacity(64 + grant.positions.len() * 12);
        bytes.push(VERSION);
        bytes.extend_from_slice(&grant.issued_at.to_be_bytes());
        bytes.extend_from_slice(&grant.chain_started.to_be_bytes());
        bytes.extend_from_slice(&grant.section.to_bytes());
        bytes.extend_from_slice(&self.sub_tag(grant.sub));
        put_varint(&mut bytes, grant.positions.len() as u64);
        for (partition, next) in grant.positions.iter() {
            bytes.extend_from_slice(&partition.topic.to_be_bytes());
            // Kafka partitions and offsets are never negative.
            put_varint(&mut bytes, partition.partition.max(0) as u64);
            put_varint(&mut bytes, next.max(0) as u64);
        }
        let mac = self.mac(b"token\0", &bytes).finalize().into_bytes();
        bytes.extend_from_slice(&mac[..MAC_BYTES]);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        if token.len() > MAX_TOKEN_CHARS {
            return Err(TooManyPartitions);
        }
        Ok(token)
    }

    fn open(&self, token: &str, sub: &str) -> Result<OpenedToken, InvalidResumeToken> {
        if token.len() > MAX_TOKEN_CHARS {
            return Err(InvalidResumeToken);
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| InvalidResumeToken)?;
        let signed_len = bytes.len().checked_sub(MAC_BYTES).ok_or(InvalidResumeToken)?;
        let (signed, mac) = bytes.split_at(signed_len);
        self.mac(b"token\0", signed).verify_truncated_left(mac).map_err(|_| InvalidResumeToken)?;
        let mut reader = Reader(signed);
        if reader.take::<1>()? != [VERSION] {
            return Err(InvalidResumeToken);
        }
        let issued_at = u64::from_be_bytes(reader.take()?);
        let chain_started = u64::from_be_bytes(reader.take()?);
        let section = SectionId::from_bytes(reader.take()?);
        let same_sub = reader.take::<SUB_TAG_BYTES>()? == self.sub_tag(sub);
        let count = reader.varint()?;
        let mut positions = Positions::default();
        for _ in 0..count {
            let topic = u32::from_be_bytes(reader.take()?);
            let partition = i32::try_from(reader.varint()?).map_err(|_| InvalidResumeToken)?;
            let next = i64::try_from(reader.varint()?).map_err(|_| InvalidResumeToken)?;
            positions.advance(PartitionId { topic, partition }, next);
        }
        if !reader.0.is_empty() {
            return Err(InvalidResumeToken);
        }
        Ok(OpenedToken { section, same_sub, issued_at, chain_started, positions })
    }
}

fn put_varint(bytes: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        bytes.push((value as u8) | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], InvalidResumeToken> {
        let (head, rest) = self.0.split_first_chunk::<N>().ok_or(InvalidResumeToken)?;
        self.0 = rest;
        Ok(*head)
    }

    fn varint(&mut self) -> Result<u64, InvalidResumeToken> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let [byte] = self.take::<1>()?;
            value |= u64::from(byte & 0x7f).checked_shl(shift).ok_or(InvalidResumeToken)?;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(InvalidResumeToken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S1: &str = "11111111-1111-4111-8111-111111111111";

    fn positions(entries: &[(u32, i32, i64)]) -> Positions {
        entries.iter().map(|&(topic, partition, next)| (PartitionId { topic, partition }, next)).collect()
    }

    fn issue(tokens: &HmacResumeTokens, sub: &str, positions: &Positions) -> String {
        let section = SectionId::parse(S1).unwrap();
        let grant = ResumeGrant { section, sub, issued_at: 1_700_000_000, chain_started: 1_699_999_000, positions };
        tokens.issue(&grant).unwrap()
    }

    proptest! {
        #[test]
        fn a_token_reads_back_as_issued(
            entries in proptest::collection::vec((any::<u32>(), 0..i32::MAX, 0..i64::MAX), 0..40),
            sub in ".{0,64}",
            issued_at in any::<u64>(),
            chain_started in any::<u64>(),
        ) {
            let tokens = HmacResumeTokens::new("secret");
            let positions = positions(&entries);
            let section = SectionId::parse(S1).unwrap();
            let grant = ResumeGrant { section, sub: &sub, issued_at, chain_started, positions: &positions };
            let token = tokens.issue(&grant).unwrap();
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "URL-safe");
            let opened = tokens.open(&token, &sub).unwrap();
            prop_assert_eq!(opened, OpenedToken { section, same_sub: true, issued_at, chain_started, positions });
        }

        /// Whatever the partitions, a token is issued only if it can be read back.
        #[test]
        fn no_token_is_issued_that_would_be_refused(
            entries in proptest::collection::vec((any::<u32>(), 0..i32::MAX, 0..i64::MAX), 100..400),
        ) {
            let tokens = HmacResumeTokens::new("secret");
            let positions = positions(&entries);
            let section = SectionId::parse(S1).unwrap();
            let grant = ResumeGrant { section, sub: "u1", issued_at: 1, chain_started: 1, positions: &positions };
            match tokens.issue(&grant) {
                Ok(token) => prop_assert!(tokens.open(&token, "u1").is_ok()),
                Err(TooManyPartitions) => prop_assert!(positions.len() > 100),
            }
        }

        #[test]
        fn any_change_to_a_token_makes_it_invalid(index in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let tokens = HmacResumeTokens::new("secret");
            let token = issue(&tokens, "u1", &positions(&[(7, 0, 1234), (9, 2, 5)]));
            let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
            let at = index.index(bytes.len());
            bytes[at] ^= flip;
            prop_assert_eq!(tokens.open(&URL_SAFE_NO_PAD.encode(&bytes), "u1"), Err(InvalidResumeToken));
        }

        #[test]
        fn any_text_is_read_without_panicking(text in ".{0,300}") {
            let _ = HmacResumeTokens::new("secret").open(&text, "u1");
        }
    }

    #[test]
    fn a_token_is_bound_to_its_secret_and_user() {
        let tokens = HmacResumeTokens::new("secret");
        let token = issue(&tokens, "u1", &positions(&[(7, 0, 1234)]));
        assert!(!tokens.open(&token, "u2").unwrap().same_sub);
        assert_eq!(HmacResumeTokens::new("other secret").open(&token, "u1"), Err(InvalidResumeToken));
        assert_eq!(tokens.open("", "u1"), Err(InvalidResumeToken));
        assert_eq!(tokens.open(&"A".repeat(MAX_TOKEN_CHARS + 1), "u1"), Err(InvalidResumeToken));
    }

    #[test]
    fn a_token_for_a_dozen_partitions_stays_compact() {
        let tokens = HmacResumeTokens::new("secret");
        let entries: Vec<(u32, i32, i64)> = (0..12).map(|i| (0x9e37_79b9 ^ i, (i % 3) as i32, 25_000_000)).collect();
        let token = issue(&tokens, "u1", &positions(&entries));
        assert!(token.len() <= 232, "{} characters", token.len());
    }

    #[test]
    fn a_token_of_the_first_format_is_refused() {
        let tokens = HmacResumeTokens::new("secret");
        let mut bytes = URL_SAFE_NO_PAD.decode(issue(&tokens, "u1", &positions(&[(7, 0, 1)]))).unwrap();
        // Version 1 had no chain start: drop it, sign again, mark it 1.
        bytes.drain(9..17);
        bytes[0] = 1;
        let signed = bytes.len() - MAC_BYTES;
        let mac = tokens.mac(b"token\0", &bytes[..signed]).finalize().into_bytes();
        bytes[signed..].copy_from_slice(&mac[..MAC_BYTES]);
        assert_eq!(tokens.open(&URL_SAFE_NO_PAD.encode(&bytes), "u1"), Err(InvalidResumeToken));
    }
}
