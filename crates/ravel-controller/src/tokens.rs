//! Bearer tokens of cluster mode: random 256-bit secrets, shown once; only their SHA-256 is
//! kept (in the store, and cached here). A presented token is hashed and compared with every
//! kept hash in constant time. Secrets are never logged.

use crate::{Controller, now_ms};
use ravel_proto::{Role, TokenInfo};
use ravel_store::TokenRecord;
use std::sync::Mutex;

/// Who a valid token says the caller is.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenIdentity {
    pub id: u64,
    pub name: String,
    pub role: Role,
}

/// Why a presented token is refused (the message names no secret).
#[derive(Debug, PartialEq)]
pub enum Refused {
    Missing,
    Unknown,
    Revoked,
    Expired,
}

impl Refused {
    pub fn message(&self) -> &'static str {
        match self {
            Refused::Missing => "no bearer token: send `Authorization: Bearer <token>` (see `ravel context add`)",
            Refused::Unknown => "the bearer token is not valid here (see `ravel token ls` on the controller)",
            Refused::Revoked => "the bearer token was revoked: ask an admin for a new one (`ravel token create`)",
            Refused::Expired => "the bearer token has expired: ask an admin for a new one (`ravel token create`)",
        }
    }
}

/// The tokens as kept, cached for checking each request without a store read.
#[derive(Default)]
pub struct Tokens {
    kept: Mutex<Vec<TokenRecord>>,
}

/// Bytes as lower-case hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a secret, lower-case hex.
pub fn hash(secret: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// A new secret: 32 random bytes, hex, with a prefix that says what it is.
pub fn new_secret() -> Result<String, String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(|_| "the system's random source failed".to_string())?;
    Ok(format!("ravel_{}", hex(&bytes)))
}

/// Equal in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn info(t: &TokenRecord) -> TokenInfo {
    TokenInfo {
        id: t.id,
        name: t.name.clone(),
        role: t.role.parse().unwrap_or(Role::User),
        created_at: t.created_at,
        expires_at: t.expires_at,
        revoked_at: t.revoked_at,
    }
}

impl Tokens {
    pub fn set(&self, all: Vec<TokenRecord>) {
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = all;
    }

    pub fn put(&self, t: TokenRecord) {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        match kept.iter_mut().find(|k| k.id == t.id) {
            Some(k) => *k = t,
            None => kept.push(t),
        }
    }

    /// Checks a presented secret at time `now`.
    pub fn check(&self, secret: Option<&str>, now: i64) -> Result<TokenIdentity, Refused> {
        let secret = secret.filter(|s| !s.is_empty()).ok_or(Refused::Missing)?;
        let h = hash(secret);
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        // Every kept hash is compared, whatever matches first.
        let mut found = None;
        for t in kept.iter() {
            if same(t.hash.as_bytes(), h.as_bytes()) {
                found = Some(t);
            }
        }
        let t = found.ok_or(Refused::Unknown)?;
        if t.revoked_at.is_some() {
            return Err(Refused::Revoked);
        }
        if t.expires_at.is_some_and(|e| e <= now) {
            return Err(Refused::Expired);
        }
        let role = t.role.parse().map_err(|_| Refused::Unknown)?;
        Ok(TokenIdentity { id: t.id, name: t.name.clone(), role })
    }

    /// Whether some admin token still opens the door (not revoked, not expired).
    fn has_admin(&self, now: i64) -> bool {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter().any(|t| t.role == "admin" && t.revoked_at.is_none() && t.expires_at.is_none_or(|e| e > now))
    }

    fn has_hash(&self, h: &str) -> bool {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|t| t.hash == h)
    }
}

impl Controller {
    /// Loads the tokens; on a controller's first start (or when no admin token is valid any
    /// more) makes an admin token: the one in `RAVEL_ADMIN_TOKEN` if given (kept from then on),
    /// else a new one, returned to be printed once.
    pub async fn init_tokens(&self, from_env: Option<String>) -> Result<Option<String>, String> {
        let all = self.store.tokens().await.map_err(|e| format!("cannot read tokens: {e}"))?;
        self.tokens.set(all);
        if let Some(secret) = from_env.filter(|s| !s.is_empty()) {
            if secret.len() < 16 {
                return Err("RAVEL_ADMIN_TOKEN is too short: use at least 16 characters".into());
            }
            if !self.tokens.has_hash(&hash(&secret)) {
                self.add_token("admin".into(), Role::Admin, None, &secret).await?;
            }
            return Ok(None);
        }
        if self.tokens.has_admin(now_ms()) {
            return Ok(None);
        }
        let secret = new_secret()?;
        self.add_token("admin".into(), Role::Admin, None, &secret).await?;
        Ok(Some(secret))
    }

    pub(crate) async fn add_token(
        &self,
        name: String,
        role: Role,
        expires_at: Option<i64>,
        secret: &str,
    ) -> Result<TokenRecord, String> {
        let record = TokenRecord {
            id: 0,
            name,
            role: role.as_str().into(),
            hash: hash(secret),
            created_at: now_ms(),
            expires_at,
            revoked_at: None,
        };
        let kept = self.store.add_token(record).await.map_err(|e| format!("cannot keep the token: {e}"))?;
        self.tokens.put(kept.clone());
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, secret: &str, role: &str) -> TokenRecord {
        TokenRecord {
            id,
            name: format!("t{id}"),
            role: role.into(),
            hash: hash(secret),
            created_at: 1,
            expires_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn tokens_are_checked_by_hash_with_revocation_and_expiry() {
        let tokens = Tokens::default();
        let mut expired = record(3, "old-secret", "user");
        expired.expires_at = Some(100);
        let mut revoked = record(2, "gone-secret", "admin");
        revoked.revoked_at = Some(50);
        tokens.set(vec![record(1, "s3cret", "agent"), revoked, expired]);
        assert_eq!(tokens.check(Some("s3cret"), 10), Ok(TokenIdentity { id: 1, name: "t1".into(), role: Role::Agent }));
        assert_eq!(tokens.check(Some("s3cret!"), 10), Err(Refused::Unknown));
        assert_eq!(tokens.check(Some(""), 10), Err(Refused::Missing));
        assert_eq!(tokens.check(None, 10), Err(Refused::Missing));
        assert_eq!(tokens.check(Some("gone-secret"), 10), Err(Refused::Revoked));
        assert!(tokens.check(Some("old-secret"), 99).is_ok());
        assert_eq!(tokens.check(Some("old-secret"), 100), Err(Refused::Expired));
    }

    #[test]
    fn secrets_are_random_and_hashes_are_sha256() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), "ravel_".len() + 64);
        assert_eq!(hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
