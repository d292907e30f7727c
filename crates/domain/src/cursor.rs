//! Sealed, stateless history cursors.
//!
//! A cursor carries everything needed to continue a walk (scope, range, page size, position,
//! total and snapshot), bound to the app and the query, and authenticated with HMAC-SHA256 under
//! the server's cursor key. Any server holding the same key continues it; nothing is kept
//! server-side. The contents are not secret (they are what the client asked for), only tamper-proof.

use crate::scope::Scope;
use crate::time::TimeRange;
use crate::{Error, Millis};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// How the message of an expired cursor's refusal begins (callers tell expiry apart by it).
pub const EXPIRED: &str = "cursor expired";

/// 2: bound to the app itself (number, key, creation time), not only its key. 3: the snapshot's
/// commits in flight follow the fixed part (a count, then each as its distance below `upto`, 4
/// bytes). 4: as 3, with the distances as LEB128 varints, each from the one before in
/// descending order (commits in flight sit close together, so most take a byte or two).
const VERSION: u8 = 4;
/// Cursors of versions 2 (no commits in flight) and 3, issued before an upgrade, still open.
const VERSION_2: u8 = 2;
const VERSION_3: u8 = 3;
const MAC_LEN: usize = 16;
/// The fixed part of the body.
const BODY_LEN: usize = 1 + 8 + 1 + 8 + 8 + 8 + 2 + 8 + 8 + 8 + 8 + 8;
/// The contract's longest cursor, in characters.
pub const MAX_CURSOR_LEN: usize = 256;
/// Length of a cursor whose snapshot has no commits in flight (always, on the embedded store):
/// unpadded base64url of the body and its tag. Each commit in flight adds 1 to 10 bytes.
pub const CURSOR_LEN: usize = encoded_len(BODY_LEN + 1 + MAC_LEN);

const fn encoded_len(bytes: usize) -> usize {
    (bytes * 4).div_ceil(3)
}

/// What a walk sees: the commits up to `upto`, less those still in flight when it began
/// (`pending`, each at most `upto`: the PostgreSQL backend's concurrent ingests). Always empty
/// on the embedded store, whose commits are sequential. A cursor carries it only when it
/// [`fits`](Snapshot::fits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub upto: u64,
    pub pending: Vec<u64>,
}

impl Snapshot {
    /// Everything committed up to `upto`.
    pub fn at(upto: u64) -> Self {
        Snapshot {
            upto,
            pending: Vec::new(),
        }
    }

    /// Whether the walk sees a row written by commit `seq`.
    pub fn sees(&self, seq: u64) -> bool {
        seq <= self.upto && !self.pending.contains(&seq)
    }

    /// Whether every commit `walk` sees had finished when this snapshot was taken: a reader
    /// (a standby) holding this snapshot then has all of the walk's rows. Of the commits up to
    /// this `upto`, those in its `pending` had not finished; later ones it does not know of.
    pub fn covers(&self, walk: &Snapshot) -> bool {
        let seen = |c: &u64| *c <= walk.upto && !walk.pending.contains(c);
        let mut unseen_above: Vec<u64> = walk
            .pending
            .iter()
            .copied()
            .filter(|p| *p > self.upto && *p <= walk.upto)
            .collect();
        unseen_above.sort_unstable();
        unseen_above.dedup();
        // Every commit after this `upto` that the walk covers is one it does not see.
        walk.upto.saturating_sub(self.upto) == unseen_above.len() as u64
            && !self.pending.iter().any(seen)
    }

    /// Whether a cursor can carry this snapshot within [`MAX_CURSOR_LEN`] characters (commits
    /// in flight far apart take more room each).
    pub fn fits(&self) -> bool {
        self.pending.iter().all(|p| *p <= self.upto)
            && encoded_len(BODY_LEN + MAC_LEN + self.pending_bytes().len()) <= MAX_CURSOR_LEN
    }

    /// The count of commits in flight, then each one's distance below the one before
    /// (the first's below `upto`), largest first, as LEB128 varints.
    fn pending_bytes(&self) -> Vec<u8> {
        let mut sorted = self.pending.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        sorted.dedup();
        let mut out = vec![sorted.len().min(u8::MAX as usize) as u8];
        let mut prev = self.upto;
        for p in sorted.iter().take(u8::MAX as usize) {
            let mut d = prev.wrapping_sub(*p);
            prev = *p;
            loop {
                let b = (d & 0x7f) as u8;
                d >>= 7;
                if d == 0 {
                    out.push(b);
                    break;
                }
                out.push(b | 0x80);
            }
        }
        out
    }
}

/// The app a cursor is bound to: its internal number and creation time as well as its key, so
/// that an app deleted and created again with the same key continues none of the old one's
/// walks.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub id: u32,
    pub key: &'a str,
    pub created_ms: Millis,
}

impl<'a> From<&'a crate::app::App> for Binding<'a> {
    fn from(a: &'a crate::app::App) -> Self {
        Binding {
            id: a.id,
            key: &a.key,
            created_ms: a.created_ms,
        }
    }
}

impl Binding<'_> {
    fn fingerprint(&self) -> [u8; 8] {
        fingerprint(&[
            &self.id.to_be_bytes(),
            self.key.as_bytes(),
            &self.created_ms.to_be_bytes(),
        ])
    }
}

/// The secret that seals cursors. Servers that share it continue each other's cursors.
#[derive(Clone)]
pub struct CursorKey([u8; 32]);

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey(..)")
    }
}

impl CursorKey {
    /// Derives the key from operator-supplied text of any length (at least 16 bytes).
    pub fn from_text(text: &str) -> Result<Self, Error> {
        if text.len() < 16 {
            return Err(Error::invalid(
                "the cursor key must be at least 16 characters long",
            ));
        }
        Ok(CursorKey(Sha256::digest(text.as_bytes()).into()))
    }

    /// The key's bytes, for keys derived from it for other purposes.
    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Position in a walk: the last message served, in `(msg_ctime, msgid)` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub ctime: Millis,
    pub msgid: u64,
}

/// Everything a cursor carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorState {
    pub range: TimeRange,
    pub count: u16,
    pub after: Position,
    pub total: u64,
    /// The commits the walk sees: those before it began; later writes are not part of it.
    pub snapshot: Snapshot,
    pub issued_ms: Millis,
}

fn fingerprint(parts: &[&[u8]]) -> [u8; 8] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u32).to_be_bytes());
        h.update(p);
    }
    let d = h.finalize();
    d[..8].try_into().expect("8 bytes")
}

fn mac(key: &CursorKey, body: &[u8]) -> [u8; MAC_LEN] {
    let mut m = Hmac::<Sha256>::new_from_slice(&key.0).expect("any key length");
    m.update(body);
    m.finalize().into_bytes()[..MAC_LEN]
        .try_into()
        .expect("16 bytes")
}

struct Reader<'a>(&'a [u8]);
impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, tail) = self.0.split_at(N);
        self.0 = tail;
        head.try_into().expect("length checked")
    }
    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take())
    }
    fn i64(&mut self) -> i64 {
        i64::from_be_bytes(self.take())
    }
    /// Version 4's commits in flight: exactly the rest of the body, each below the one before.
    fn pending(&mut self, upto: u64) -> Option<Vec<u64>> {
        let (&n, mut rest) = self.0.split_first()?;
        let mut out = Vec::with_capacity(n as usize);
        let mut prev = upto;
        for _ in 0..n {
            let mut d = 0u64;
            let mut shift = 0;
            loop {
                let (&b, tail) = rest.split_first()?;
                rest = tail;
                if shift > 63 {
                    return None;
                }
                d |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            prev = prev.checked_sub(d)?;
            out.push(prev);
        }
        self.0 = rest;
        rest.is_empty().then_some(out)
    }
}

/// Seals a cursor for `app` and `scope`.
pub fn seal(key: &CursorKey, app: Binding<'_>, scope: &Scope, st: &CursorState) -> String {
    let mut b = Vec::with_capacity(BODY_LEN + MAC_LEN);
    b.push(VERSION);
    b.extend_from_slice(&app.fingerprint());
    b.push(scope.tag());
    b.extend_from_slice(&fingerprint(&[&[scope.tag()], scope.id().as_bytes()]));
    b.extend_from_slice(&st.range.begin.to_be_bytes());
    b.extend_from_slice(&st.range.end.to_be_bytes());
    b.extend_from_slice(&st.count.to_be_bytes());
    b.extend_from_slice(&st.after.ctime.to_be_bytes());
    b.extend_from_slice(&st.after.msgid.to_be_bytes());
    b.extend_from_slice(&st.total.to_be_bytes());
    b.extend_from_slice(&st.snapshot.upto.to_be_bytes());
    b.extend_from_slice(&st.issued_ms.to_be_bytes());
    debug_assert_eq!(b.len(), BODY_LEN);
    // The stores hand out only snapshots that fit.
    debug_assert!(st.snapshot.fits(), "{:?}", st.snapshot);
    b.extend_from_slice(&st.snapshot.pending_bytes());
    let tag = mac(key, &b);
    b.extend_from_slice(&tag);
    URL_SAFE_NO_PAD.encode(b)
}

/// Where a version 4 body ends: after the count of commits in flight and that many varints.
fn varints_end(bytes: &[u8]) -> Option<usize> {
    let n = *bytes.get(BODY_LEN)?;
    let mut at = BODY_LEN + 1;
    for _ in 0..n {
        let len = bytes
            .get(at..)?
            .iter()
            .take(10)
            .position(|b| b & 0x80 == 0)?
            + 1;
        at += len;
    }
    Some(at)
}

/// Opens a cursor, checking in turn its form, its seal, the app, the scope and its age.
pub fn open(
    key: &CursorKey,
    app: Binding<'_>,
    scope: &Scope,
    cursor: &str,
    now_ms: Millis,
    ttl_ms: Millis,
) -> Result<CursorState, Error> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor.as_bytes()).map_err(|_| {
        Error::invalid("cursor is truncated or malformed: pass the cursor value exactly as returned, or start again with count, begin_time and end_time")
    })?;
    let malformed = || {
        Error::invalid(
            "cursor is truncated or malformed; pass the cursor value exactly as returned, or start again with count, begin_time and end_time",
        )
    };
    let body_len = match bytes.first() {
        Some(&VERSION_2) => BODY_LEN,
        Some(&VERSION_3) if bytes.len() > BODY_LEN => BODY_LEN + 1 + 4 * bytes[BODY_LEN] as usize,
        Some(&VERSION) => varints_end(&bytes).ok_or_else(malformed)?,
        _ => return Err(malformed()),
    };
    if bytes.len() != body_len + MAC_LEN || bytes.len() > MAX_CURSOR_LEN {
        return Err(malformed());
    }
    let (body, tag) = bytes.split_at(body_len);
    let expected = mac(key, body);
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&expected[..], tag)) {
        return Err(Error::invalid(
            "cursor is forged or was sealed with another cursor key; start again with count, begin_time and end_time",
        ));
    }
    let mut r = Reader(&body[1..]);
    if r.take::<8>() != app.fingerprint() {
        return Err(Error::invalid(
            "cursor was issued to another app; use the cursor your own app received",
        ));
    }
    let tag_byte = r.take::<1>()[0];
    if tag_byte != scope.tag()
        || r.take::<8>() != fingerprint(&[&[scope.tag()], scope.id().as_bytes()])
    {
        return Err(Error::invalid(
            "cursor belongs to another query (a different endpoint, user, group or chatroom); send it to the URL that issued it",
        ));
    }
    let range = TimeRange {
        begin: r.i64(),
        end: r.i64(),
    };
    let count = u16::from_be_bytes(r.take());
    let after = Position {
        ctime: r.i64(),
        msgid: r.u64(),
    };
    let total = r.u64();
    let upto = r.u64();
    let issued_ms = r.i64();
    let mut snapshot = Snapshot::at(upto);
    if body[0] == VERSION_3 {
        let n = r.take::<1>()[0];
        snapshot.pending = (0..n)
            .map(|_| upto.wrapping_sub(u64::from(u32::from_be_bytes(r.take()))))
            .collect();
    } else if body[0] == VERSION {
        snapshot.pending = r.pending(upto).ok_or_else(malformed)?;
    }
    if now_ms.saturating_sub(issued_ms) > ttl_ms {
        return Err(Error::invalid(format!(
            "{EXPIRED}: cursors are valid for {} seconds after they are issued; start again with count, begin_time and end_time",
            ttl_ms / 1000
        )));
    }
    Ok(CursorState {
        range,
        count,
        after,
        total,
        snapshot,
        issued_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn app(key: &str) -> Binding<'_> {
        Binding {
            id: 7,
            key,
            created_ms: 1_000,
        }
    }

    fn key() -> CursorKey {
        CursorKey::from_text("0123456789abcdef-test-key").unwrap()
    }

    fn state() -> CursorState {
        CursorState {
            range: TimeRange {
                begin: 1_000,
                end: 2_000_999,
            },
            count: 500,
            after: Position {
                ctime: 1_500,
                msgid: 42,
            },
            total: 3000,
            snapshot: Snapshot::at(7),
            issued_ms: 10_000,
        }
    }

    #[test]
    fn round_trip_and_url_safe() {
        let s = state();
        let c = seal(&key(), app("appA"), &Scope::App, &s);
        assert_eq!(c.len(), CURSOR_LEN);
        assert_eq!(CURSOR_LEN, 124);
        assert!(
            c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(
            open(&key(), app("appA"), &Scope::App, &c, 10_000, 120_000).unwrap(),
            s
        );
    }

    #[test]
    fn commits_in_flight_round_trip_and_version_2_and_3_cursors_still_open() {
        let mut s = state();
        s.snapshot = Snapshot {
            upto: 1 << 62 | 9_000,
            pending: vec![1 << 62 | 9_000, 1 << 62 | 8_999, 1 << 62 | 12],
        };
        let c = seal(&key(), app("appA"), &Scope::App, &s);
        // Distances 0, 1 and 8987: one byte, one byte, two bytes.
        assert_eq!(c.len(), encoded_len(BODY_LEN + 1 + 4 + MAC_LEN));
        let opened = open(&key(), app("appA"), &Scope::App, &c, 10_000, 120_000).unwrap();
        assert_eq!(opened, s);
        assert!(!opened.snapshot.sees(1 << 62 | 12) && opened.snapshot.sees(1 << 62 | 13));
        assert!(!opened.snapshot.sees(1 << 62 | 9_001) && opened.snapshot.sees(5));
        // A version 2 cursor (sealed before the upgrade): the fixed part alone.
        let s = state();
        let raw = URL_SAFE_NO_PAD
            .decode(seal(&key(), app("appA"), &Scope::App, &s))
            .unwrap();
        let mut v2 = raw[..BODY_LEN].to_vec();
        v2[0] = VERSION_2;
        let tag = mac(&key(), &v2);
        v2.extend_from_slice(&tag);
        let v2 = URL_SAFE_NO_PAD.encode(v2);
        assert_eq!(v2.len(), 123);
        assert_eq!(
            open(&key(), app("appA"), &Scope::App, &v2, 10_000, 120_000).unwrap(),
            s
        );
        // A version 3 cursor: 4 bytes a commit in flight.
        let mut v3 = raw[..BODY_LEN].to_vec();
        v3[0] = VERSION_3;
        v3.push(2);
        v3.extend_from_slice(&3u32.to_be_bytes());
        v3.extend_from_slice(&70_000u32.to_be_bytes());
        let tag = mac(&key(), &v3);
        v3.extend_from_slice(&tag);
        let opened = open(
            &key(),
            app("appA"),
            &Scope::App,
            &URL_SAFE_NO_PAD.encode(v3),
            10_000,
            120_000,
        )
        .unwrap();
        assert_eq!(opened.snapshot.pending, vec![4, 7u64.wrapping_sub(70_000)]);
    }

    /// Commits in flight, as PostgreSQL lists them: near `upto` mostly, a few far below.
    fn snapshots() -> impl Strategy<Value = Snapshot> {
        (
            (1u64 << 62)..(1u64 << 62) + (1 << 40),
            proptest::collection::vec(prop_oneof![4 => 0u64..500, 1 => 0u64..(1 << 40)], 0..120),
        )
            .prop_map(|(upto, below)| {
                let mut pending: Vec<u64> = below.iter().map(|d| upto - d).collect();
                pending.sort_unstable_by(|a, b| b.cmp(a));
                pending.dedup();
                Snapshot { upto, pending }
            })
    }

    #[test]
    fn refusals_say_which() {
        let user = |u: &str| Scope::User(u.into());
        let c = seal(&key(), app("appA"), &user("u"), &state());
        let other = CursorKey::from_text("another-key-of-16-bytes").unwrap();
        let reborn_id = Binding {
            id: 8,
            ..app("appA")
        };
        let reborn_later = Binding {
            created_ms: 2_000,
            ..app("appA")
        };
        // (key, app, scope, cursor, now, what the refusal says)
        let cases = [
            (
                key(),
                app("appB"),
                user("u"),
                c.as_str(),
                10_000,
                "another app",
            ),
            (key(), reborn_id, user("u"), &c, 10_000, "another app"),
            (key(), reborn_later, user("u"), &c, 10_000, "another app"),
            (key(), app("appA"), user("v"), &c, 10_000, "another query"),
            (
                key(),
                app("appA"),
                Scope::Group("u".into()),
                &c,
                10_000,
                "another query",
            ),
            (key(), app("appA"), user("u"), &c, 130_001, "expired"),
            (
                key(),
                app("appA"),
                user("u"),
                &c[..c.len() - 4],
                10_000,
                "truncated",
            ),
            (other, app("appA"), user("u"), &c, 10_000, "forged"),
            (key(), app("appA"), Scope::App, "!!!", 10_000, "malformed"),
        ];
        for (k, a, scope, cursor, now, says) in cases {
            let err = open(&k, a, &scope, cursor, now, 120_000)
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{says}: {err}");
        }
    }

    proptest! {
        #[test]
        fn any_single_byte_change_is_refused(pos in 0usize..114, bit in 0u8..8) {
            let c = seal(&key(), app("appA"), &Scope::App, &state());
            let mut raw = URL_SAFE_NO_PAD.decode(&c).unwrap();
            let pos = pos % raw.len();
            raw[pos] ^= 1 << bit;
            let forged = URL_SAFE_NO_PAD.encode(raw);
            prop_assert!(open(&key(), app("appA"), &Scope::App, &forged, 10_000, 120_000).is_err());
        }

        /// Every snapshot that fits seals into a cursor of at most 256 characters that opens
        /// to it; the others are refused by `fits` (the store then waits or answers 503).
        #[test]
        fn snapshots_that_fit_seal_within_the_contracts_length(snap in snapshots()) {
            let mut s = state();
            s.snapshot = snap.clone();
            if snap.fits() {
                let c = seal(&key(), app("appA"), &Scope::App, &s);
                prop_assert!(c.len() <= MAX_CURSOR_LEN, "{}", c.len());
                prop_assert_eq!(open(&key(), app("appA"), &Scope::App, &c, 10_000, 120_000).unwrap(), s);
            } else {
                prop_assert!(snap.pending.len() > 20, "{} in flight did not fit", snap.pending.len());
            }
        }

        /// `covers` against a model: the reader's finished commits (up to its `upto`, less its
        /// own in flight) include every commit the walk sees.
        #[test]
        fn covers_means_every_commit_the_walk_sees_had_finished(
            walk_upto in 0u64..40,
            walk_pending in proptest::collection::btree_set(0u64..40, 0..8),
            reader_upto in 0u64..40,
            reader_pending in proptest::collection::btree_set(0u64..40, 0..8),
        ) {
            let walk = Snapshot { upto: walk_upto, pending: walk_pending.into_iter().filter(|p| *p <= walk_upto).collect() };
            let reader = Snapshot { upto: reader_upto, pending: reader_pending.into_iter().filter(|p| *p <= reader_upto).collect() };
            let finished = |c: u64| c <= reader.upto && !reader.pending.contains(&c);
            let model = (0..40).filter(|c| walk.sees(*c)).all(finished);
            prop_assert_eq!(reader.covers(&walk), model);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,300}") {
            let _ = open(&key(), app("appA"), &Scope::App, &s, 0, 120_000);
        }
    }
}
