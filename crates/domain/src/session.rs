//! Console sessions: which app a browser signed in as, and until when, sealed into the session
//! cookie (ChaCha20-Poly1305: the contents are secret and tamper-proof) under a key derived from
//! the cursor key, so that any server sharing that key accepts it and nothing is kept
//! server-side. A session is bound to the app itself (number, key, creation time) and to its
//! master secret: deleting the app or rotating the secret ends every session of it.

use crate::Millis;
use crate::app::{App, SecretHash};
use crate::cursor::CursorKey;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 12;
/// Longest sealed session accepted (an app key is at most 64 bytes): bounds the work a forged
/// cookie can cause.
const MAX_SEALED_LEN: usize = 512;

/// The key sessions are sealed with, derived from the cursor key for this purpose alone.
#[derive(Clone)]
pub struct SessionKey(Key);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    pub fn derive(cursor_key: &CursorKey) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(cursor_key.bytes())
            .expect("HMAC takes any key length");
        mac.update(b"imreport console session v1");
        SessionKey(mac.finalize().into_bytes())
    }
}

/// A signed-in console session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub app_id: u32,
    pub app_key: String,
    pub app_created_ms: Millis,
    /// A digest of the app's secret hash when the session began.
    pub secret_tag: String,
    pub expires_ms: Millis,
}

/// Why a session cookie is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// It was valid and has expired: sign in again.
    Expired,
    /// Forged, damaged, sealed under another key, or for an app (or secret) that is gone.
    Invalid,
}

fn secret_tag(secret: &SecretHash) -> String {
    let d = Sha256::new()
        .chain_update(secret.salt.as_bytes())
        .chain_update([0])
        .chain_update(secret.sha256.as_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(&d[..12])
}

impl Session {
    /// A session for `app`, from `now` for `ttl_ms`.
    pub fn begin(app: &App, now: Millis, ttl_ms: Millis) -> Session {
        Session {
            app_id: app.id,
            app_key: app.key.clone(),
            app_created_ms: app.created_ms,
            secret_tag: secret_tag(&app.secret),
            expires_ms: now.saturating_add(ttl_ms),
        }
    }

    /// Whether the session still belongs to `app` as it is now (same app, same secret).
    pub fn is_for(&self, app: &App) -> bool {
        self.app_id == app.id
            && self.app_key == app.key
            && self.app_created_ms == app.created_ms
            && self.secret_tag == secret_tag(&app.secret)
    }

    /// The cookie value: nonce and ciphertext, base64url.
    pub fn seal(&self, key: &SessionKey) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let plain = serde_json::to_vec(self).expect("serializable");
        let sealed = ChaCha20Poly1305::new(&key.0)
            .encrypt(Nonce::from_slice(&nonce), plain.as_slice())
            .expect("encryption of a small buffer cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// Opens a cookie value sealed by [`Session::seal`], if it is genuine and not expired.
    pub fn open(key: &SessionKey, sealed: &str, now: Millis) -> Result<Session, SessionError> {
        if sealed.len() > MAX_SEALED_LEN {
            return Err(SessionError::Invalid);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(sealed)
            .map_err(|_| SessionError::Invalid)?;
        if raw.len() <= NONCE_LEN {
            return Err(SessionError::Invalid);
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let plain = ChaCha20Poly1305::new(&key.0)
            .decrypt(Nonce::from_slice(nonce), body)
            .map_err(|_| SessionError::Invalid)?;
        let s: Session = serde_json::from_slice(&plain).map_err(|_| SessionError::Invalid)?;
        if now >= s.expires_ms {
            return Err(SessionError::Expired);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: u32, secret: &str) -> App {
        App {
            id,
            key: "consoletestkey0000000000".into(),
            name: "t".into(),
            secret: SecretHash::new(secret),
            created_ms: 1_000,
        }
    }

    #[test]
    fn a_session_opens_until_it_expires_and_only_under_its_key() {
        let key = SessionKey::derive(&CursorKey::from_text("a cursor key of some length").unwrap());
        let other =
            SessionKey::derive(&CursorKey::from_text("another cursor key, longer").unwrap());
        let a = app(7, "secret");
        let s = Session::begin(&a, 10_000, 3_600_000);
        let sealed = s.seal(&key);
        assert_ne!(sealed, s.seal(&key), "a fresh nonce every time");
        assert_eq!(Session::open(&key, &sealed, 10_000), Ok(s.clone()));
        assert!(s.is_for(&a));
        assert_eq!(
            Session::open(&key, &sealed, 10_000 + 3_600_000),
            Err(SessionError::Expired)
        );
        assert_eq!(
            Session::open(&other, &sealed, 10_000),
            Err(SessionError::Invalid)
        );
        // Any change to the cookie is refused.
        let mut bytes = sealed.clone().into_bytes();
        for i in [0, bytes.len() / 2, bytes.len() - 1] {
            let orig = bytes[i];
            bytes[i] = if orig == b'A' { b'B' } else { b'A' };
            let forged = String::from_utf8(bytes.clone()).unwrap();
            assert_eq!(
                Session::open(&key, &forged, 10_000),
                Err(SessionError::Invalid)
            );
            bytes[i] = orig;
        }
        for junk in ["", "x", "%%%", &"A".repeat(600)] {
            assert_eq!(Session::open(&key, junk, 0), Err(SessionError::Invalid));
        }
    }

    #[test]
    fn a_session_ends_with_its_app_or_its_secret() {
        let a = app(7, "secret");
        let s = Session::begin(&a, 0, 1000);
        // The secret rotated (a new hash, even of the same secret), or the app made again.
        assert!(!s.is_for(&app(7, "secret")));
        let mut again = a.clone();
        again.id = 8;
        assert!(!s.is_for(&again));
        let mut later = a.clone();
        later.created_ms += 1;
        assert!(!s.is_for(&later));
    }
}
