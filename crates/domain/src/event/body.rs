//! A message body as stored: checked for what strict JSON readers refuse, and compacted.

use super::MAX_BODY_DEPTH;

/// The value of four hex digits (already checked by the JSON parser; anything else reads as 0).
fn hex4(b: &[u8]) -> u32 {
    std::str::from_utf8(b)
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

/// Checks a `msg_body` that the JSON parser has accepted and removes its insignificant
/// whitespace, refusing what strict readers of a page would fail on: an escaped surrogate
/// without its pair (`"\ud800"`, which is no Unicode text), and objects or arrays nested deeper
/// than [`MAX_BODY_DEPTH`].
///
/// One pass over the bytes, copying whole spans between removed ones: JSON's whitespace,
/// brackets and quotes are ASCII, and no byte of a multi-byte UTF-8 character is. Strings, most
/// of a body, are crossed with `memchr` to their next quote or backslash rather than byte by
/// byte (this was an eighth of decoding an ingest request).
pub fn compact_body(s: &str) -> Result<String, &'static str> {
    const LONE: &str = "holds an escaped UTF-16 surrogate without its pair (such as \\ud800), which is not Unicode text; send valid UTF-8 or paired escapes";
    let b = s.as_bytes();
    // Spans of `s` between removed bytes: each cut is at an ASCII byte, so at a character
    // boundary, and the result needs no second UTF-8 check (that was 1% of ingest's CPU).
    let mut out = String::with_capacity(b.len());
    let (mut i, mut from, mut depth) = (0, 0, 0usize);
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while let Some(j) = memchr::memchr2(b'"', b'\\', &b[i..]) {
                    let at = i + j;
                    if b[at] == b'"' {
                        i = at;
                        break;
                    }
                    if b.get(at + 1) != Some(&b'u') {
                        i = (at + 2).min(b.len());
                        continue;
                    }
                    let unit = hex4(b.get(at + 2..at + 6).unwrap_or_default());
                    if (0xDC00..0xE000).contains(&unit) {
                        return Err(LONE);
                    }
                    i = at + 6;
                    if (0xD800..0xDC00).contains(&unit) {
                        let low = b.get(at + 6..at + 8) == Some(b"\\u")
                            && (0xDC00..0xE000)
                                .contains(&hex4(b.get(at + 8..at + 12).unwrap_or_default()));
                        if !low {
                            return Err(LONE);
                        }
                        i = at + 12;
                    }
                    i = i.min(b.len());
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_BODY_DEPTH {
                    return Err("nests objects and arrays more than 64 levels deep; flatten it");
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b' ' | b'\n' | b'\r' | b'\t' => {
                out.push_str(&s[from..i]);
                from = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push_str(&s[from..]);
    Ok(out)
}
