//! Apps (tenants): their keys, and how master secrets are kept and checked.

use crate::Error;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Length of generated app keys and master secrets: what the JMessage Java SDK accepts.
pub const GENERATED_LEN: usize = 24;

/// A random 24-character `[a-zA-Z0-9]` string from the OS-seeded CSPRNG.
pub fn generate_token() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(GENERATED_LEN)
        .map(char::from)
        .collect()
}

/// Checks an operator-chosen app key. Generated keys are 24 alphanumerics; chosen ones may be any
/// 1..=64 of `[A-Za-z0-9_-]` so that keys migrated from elsewhere still work (a colon would break
/// HTTP Basic, which splits at the first one).
pub fn validate_app_key(key: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "app key {key:?} is invalid: use 1 to 64 characters of [A-Za-z0-9_-] (24 alphanumerics for JMessage SDKs)"
        )))
    }
}

/// Checks an app's display name: at most 256 bytes.
pub fn validate_app_name(name: &str) -> Result<(), Error> {
    if name.len() > 256 {
        return Err(Error::invalid("app name is over 256 bytes"));
    }
    Ok(())
}

/// Checks an operator-chosen master secret: 8..=128 printable ASCII characters.
pub fn validate_secret(secret: &str) -> Result<(), Error> {
    let ok = (8..=128).contains(&secret.len()) && secret.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "master secret is invalid: use 8 to 128 printable ASCII characters without spaces (24 alphanumerics for JMessage SDKs)",
        ))
    }
}

/// A master secret as stored: a random salt and SHA-256(salt || secret). Secrets are high-entropy
/// machine credentials checked on every request, so a fast hash is the right tool: a password
/// hash (argon2) would make each request cost tens of milliseconds without protecting anything more.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SecretHash {
    pub salt: String,
    pub sha256: String,
}

fn digest(salt: &str, secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt.as_bytes());
    h.update([0u8]);
    h.update(secret.as_bytes());
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl SecretHash {
    pub fn new(secret: &str) -> Self {
        let salt = generate_token();
        let sha256 = hex(&digest(&salt, secret));
        SecretHash { salt, sha256 }
    }

    /// Constant-time comparison of the presented secret with the stored hash.
    pub fn verify(&self, secret: &str) -> bool {
        let presented = hex(&digest(&self.salt, secret));
        presented.as_bytes().ct_eq(self.sha256.as_bytes()).into()
    }

    /// A hash no secret matches, checked against when the app key is unknown so that unknown keys
    /// and wrong secrets take the same time.
    pub fn decoy() -> Self {
        SecretHash {
            salt: "decoy".into(),
            sha256: "0".repeat(64),
        }
    }
}

/// What the admin API answers to a challenge: HMAC-SHA256 of the nonce under the admin token,
/// in hex. The `imreport app` commands check it before sending the token or any secret, so a
/// stale `admin.json` never leads them to another process listening on that port.
pub fn admin_proof(token: &str, nonce: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("any key length");
    m.update(b"imreport-admin-proof\0");
    m.update(nonce.as_bytes());
    hex(&m.finalize().into_bytes())
}

/// An app as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct App {
    /// Internal number used in store keys; never reused after deletion.
    pub id: u32,
    pub key: String,
    pub name: String,
    pub secret: SecretHash,
    pub created_ms: i64,
}

/// What an operator sees about an app (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppInfo {
    pub app_key: String,
    pub name: String,
    pub created_ms: i64,
}

impl From<&App> for AppInfo {
    fn from(a: &App) -> Self {
        AppInfo {
            app_key: a.key.clone(),
            name: a.name.clone(),
            created_ms: a.created_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_24_alphanumerics_and_differ() {
        let a = generate_token();
        let b = generate_token();
        assert_eq!(a.len(), 24);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
        validate_app_key(&a).unwrap();
        validate_secret(&b).unwrap();
    }

    #[test]
    fn secrets_verify_only_themselves() {
        let h = SecretHash::new("s3cretS3cretS3cretS3cret");
        assert!(h.verify("s3cretS3cretS3cretS3cret"));
        assert!(!h.verify("s3cretS3cretS3cretS3cre"));
        assert!(!SecretHash::decoy().verify(""));
        assert!(!h.sha256.contains("s3cret"));
    }

    #[test]
    fn admin_proofs_depend_on_token_and_nonce() {
        let p = admin_proof("token-a", "nonce-1");
        assert_eq!(p.len(), 64);
        assert_eq!(p, admin_proof("token-a", "nonce-1"));
        assert_ne!(p, admin_proof("token-b", "nonce-1"));
        assert_ne!(p, admin_proof("token-a", "nonce-2"));
    }

    #[test]
    fn bad_keys_are_refused() {
        for k in ["", "a:b", "with space", &"x".repeat(65)] {
            assert!(validate_app_key(k).is_err(), "{k}");
        }
    }
}
