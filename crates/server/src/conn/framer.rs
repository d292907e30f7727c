//! What the HTTP/1 parser gets to see: each request head as the client sent it, except that
//! raw spaces inside the request target become `%20`, and heads it would refuse are answered
//! here, with the API's JSON error, instead of with its empty one.
//!
//! The official JMessage Java SDK sends statistics starts unencoded
//! (`GET /v2/statistic/messages?time_unit=HOUR&start=2026-11-29 10&duration=3 HTTP/1.1`),
//! which JMessage's own front end served and the HTTP/1 grammar (and so hyper) refuses. To
//! rewrite only request lines, this follows the message framing of every request on a
//! connection exactly as hyper does (heads parsed by the same `httparse`; bodies by
//! `Content-Length`, or chunked when the last `Transfer-Encoding` is `chunked`): body bytes
//! pass through untouched, and anything this cannot frame ends the connection. HTTP/2 (its
//! preface) passes through untouched.

/// A head this refuses, and the answer it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
    pub message: &'static str,
}

impl Refusal {
    /// The HTTP/1.1 response that refuses, with the API's JSON error body, closing.
    pub fn response(&self) -> Vec<u8> {
        let body = format!(
            r#"{{"error":{{"code":899003,"message":"{}"}}}}"#,
            self.message
        );
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: application/json; charset=utf-8\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            self.status,
            self.reason,
            body.len()
        )
        .into_bytes()
    }
}

const MALFORMED: Refusal = Refusal {
    status: 400,
    reason: "Bad Request",
    message: "the request line or a header is malformed; send HTTP/1.1 with a percent-encoded target",
};
const BAD_LENGTH: Refusal = Refusal {
    status: 400,
    reason: "Bad Request",
    message: "the request body's length is not given right: one valid Content-Length, or Transfer-Encoding ending in chunked (HTTP/1.1)",
};
const TOO_LARGE: Refusal = Refusal {
    status: 431,
    reason: "Request Header Fields Too Large",
    message: "the request head is over 64 KiB or 128 header fields; send fewer or smaller headers",
};

/// Where in the byte stream the framer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Gathering a request head.
    Head,
    /// In a body of this many more bytes.
    Body(u64),
    /// In a chunked body: a chunk-size line, a chunk's data (and its CRLF), or the trailers.
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    /// Everything from here on is passed through (HTTP/2, or after an upgrade).
    Through,
}

#[derive(Debug)]
pub struct Framer {
    state: State,
    /// The head (or chunk line) gathered so far.
    line: Vec<u8>,
    /// Where the search for the head's end resumes.
    scanned: usize,
    max_head_bytes: usize,
    max_headers: usize,
}

/// Longest chunk-size line or trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;

impl Framer {
    pub fn new(max_head_bytes: usize, max_headers: usize) -> Self {
        Framer {
            state: State::Head,
            line: Vec::new(),
            scanned: 0,
            max_head_bytes,
            max_headers,
        }
    }

    /// Whether a head has begun and not yet ended.
    pub fn in_head(&self) -> bool {
        self.state == State::Head && !self.line.is_empty()
    }

    /// How many bytes may go from the socket straight to the parser, unread by this: the rest
    /// of a body of known length, or everything once passing through.
    pub fn direct(&self) -> Option<u64> {
        match self.state {
            State::Body(n) if n > 0 => Some(n),
            State::Through => Some(u64::MAX),
            _ => None,
        }
    }

    /// Counts bytes that went straight through (see [`Framer::direct`]).
    pub fn passed(&mut self, n: usize) {
        if let State::Body(left) = &mut self.state {
            *left -= n as u64;
            if *left == 0 {
                self.state = State::Head;
            }
        }
    }

    /// Takes bytes read from the socket and appends what the parser is to get to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Refusal> {
        while !input.is_empty() {
            match self.state {
                State::Through => {
                    out.extend_from_slice(input);
                    return Ok(());
                }
                State::Body(0) => self.state = State::Head,
                State::Body(n) => {
                    let k = (n.min(input.len() as u64)) as usize;
                    out.extend_from_slice(&input[..k]);
                    input = &input[k..];
                    self.state = State::Body(n - k as u64);
                }
                State::ChunkData(n) => {
                    let k = (n.min(input.len() as u64)) as usize;
                    out.extend_from_slice(&input[..k]);
                    input = &input[k..];
                    self.state = if n == k as u64 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(n - k as u64)
                    };
                }
                State::Head => input = self.head(input, out)?,
                State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    input = self.chunk_line(input, out)?
                }
            }
        }
        Ok(())
    }

    /// Gathers a head; once whole, hands it on rewritten and sets the body's framing.
    fn head<'i>(&mut self, mut input: &'i [u8], out: &mut Vec<u8>) -> Result<&'i [u8], Refusal> {
        // Empty lines before a request line are allowed (the parser skips them too).
        if self.line.is_empty() {
            let blank = input
                .iter()
                .take_while(|b| matches!(b, b'\r' | b'\n'))
                .count();
            out.extend_from_slice(&input[..blank]);
            input = &input[blank..];
            if input.is_empty() {
                return Ok(input);
            }
        }
        let before = self.line.len();
        self.line.extend_from_slice(input);
        let from = self.scanned.saturating_sub(3);
        let crlf = memchr::memmem::find(&self.line[from..], b"\r\n\r\n").map(|i| from + i + 4);
        let lf = memchr::memmem::find(&self.line[from..], b"\n\n").map(|i| from + i + 2);
        let end = match (crlf, lf) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let Some(end) = end else {
            if self.line.len() > self.max_head_bytes {
                return Err(TOO_LARGE);
            }
            // The HTTP/2 preface's first line is a head of its own: hand it on.
            if self.line.starts_with(b"PRI * HTTP/2.0") {
                self.state = State::Through;
                out.append(&mut self.line);
                return Ok(&[]);
            }
            self.scanned = self.line.len();
            return Ok(&[]);
        };
        if end > self.max_head_bytes {
            return Err(TOO_LARGE);
        }
        let rest = &input[end - before..];
        let head = std::mem::take(&mut self.line);
        self.scanned = 0;
        let head = &head[..end];
        if head.starts_with(b"PRI * HTTP/2.0") {
            self.state = State::Through;
            out.extend_from_slice(head);
            out.extend_from_slice(rest);
            return Ok(&[]);
        }
        let rewritten = encode_target_spaces(head);
        self.state = self.framing(&rewritten)?;
        out.extend_from_slice(&rewritten);
        Ok(rest)
    }

    /// The framing of the body that follows a head, decided as hyper decides it.
    fn framing(&self, head: &[u8]) -> Result<State, Refusal> {
        let mut headers = vec![httparse::EMPTY_HEADER; self.max_headers];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(TOO_LARGE),
            _ => return Err(MALFORMED),
        }
        if req
            .path
            .is_some_and(|p| p.parse::<axum::http::Uri>().is_err())
        {
            return Err(MALFORMED);
        }
        let http11 = req.version == Some(1);
        let (mut te, mut chunked, mut length) = (false, false, None::<u64>);
        let mut upgrade = req.method == Some("CONNECT");
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                if !http11 {
                    return Err(BAD_LENGTH);
                }
                te = true;
                chunked = ends_in_chunked(h.value);
            } else if h.name.eq_ignore_ascii_case("content-length") && !te {
                let n = content_length(h.value).ok_or(BAD_LENGTH)?;
                if length.is_some_and(|prev| prev != n) {
                    return Err(BAD_LENGTH);
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        Ok(if te {
            if !chunked {
                return Err(BAD_LENGTH);
            }
            State::ChunkSize
        } else if upgrade && length.is_none() {
            // What follows an upgrade is not HTTP/1 (imreport accepts none, but never mangles).
            State::Through
        } else {
            State::Body(length.unwrap_or(0))
        })
    }

    /// A chunk-size line, the CRLF after a chunk's data, or the trailer section, passed on as
    /// they are once whole.
    fn chunk_line<'i>(&mut self, input: &'i [u8], out: &mut Vec<u8>) -> Result<&'i [u8], Refusal> {
        let Some(nl) = memchr::memchr(b'\n', input) else {
            self.line.extend_from_slice(input);
            if self.line.len() > MAX_CHUNK_LINE {
                return Err(BAD_LENGTH);
            }
            return Ok(&[]);
        };
        self.line.extend_from_slice(&input[..=nl]);
        let line = std::mem::take(&mut self.line);
        out.extend_from_slice(&line);
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        self.state = match self.state {
            State::ChunkSize => {
                let size = text.split(|b| *b == b';').next().unwrap_or_default();
                let size = std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                    .ok_or(BAD_LENGTH)?;
                if size == 0 {
                    State::Trailers
                } else {
                    State::ChunkData(size)
                }
            }
            State::ChunkEnd if text.is_empty() => State::ChunkSize,
            State::ChunkEnd => return Err(BAD_LENGTH),
            // Trailer fields until the empty line that ends the message.
            State::Trailers if text.is_empty() => State::Head,
            State::Trailers => State::Trailers,
            other => other,
        };
        Ok(&input[nl + 1..])
    }
}

/// The head with every space inside the request target percent-encoded. The request line is
/// `METHOD SP TARGET SP HTTP/x.y`: its first space ends the method and its last starts the
/// version, so the spaces between them belong to the target.
fn encode_target_spaces(head: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let line_end = memchr::memchr(b'\n', head).unwrap_or(head.len());
    let line = &head[..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (Some(first), Some(last)) = (memchr::memchr(b' ', line), memchr::memrchr(b' ', line))
    else {
        return head.into();
    };
    if first == last || !line[last + 1..].starts_with(b"HTTP/") {
        return head.into();
    }
    let target = &line[first + 1..last];
    // Leading and trailing spaces are delimiters the parser may take; only inner ones move.
    let inner = target.trim_ascii();
    if !inner.contains(&b' ') {
        return head.into();
    }
    let start = first + 1 + (target.len() - target.trim_ascii_start().len());
    let mut out = Vec::with_capacity(head.len() + 16);
    out.extend_from_slice(&head[..start]);
    for b in inner {
        match b {
            b' ' => out.extend_from_slice(b"%20"),
            b => out.push(*b),
        }
    }
    out.extend_from_slice(&head[start + inner.len()..]);
    out.into()
}

/// A Content-Length value: digits only (as hyper reads it), or comma-separated equal values.
fn content_length(v: &[u8]) -> Option<u64> {
    let mut value = None;
    for part in v.split(|b| *b == b',') {
        let part = part.trim_ascii();
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = std::str::from_utf8(part).ok()?.parse::<u64>().ok()?;
        if value.is_some_and(|prev| prev != n) {
            return None;
        }
        value = Some(n);
    }
    value
}

/// Whether a Transfer-Encoding value's last coding is `chunked`.
fn ends_in_chunked(v: &[u8]) -> bool {
    v.rsplit(|b| *b == b',')
        .next()
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(chunks: &[&[u8]]) -> Result<Vec<u8>, Refusal> {
        let mut f = Framer::new(64 * 1024, 128);
        let mut out = Vec::new();
        for c in chunks {
            f.feed(c, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn raw_spaces_in_the_target_are_encoded_and_nothing_else_changes() {
        let req = b"GET /v2/statistic/messages?time_unit=HOUR&start=2026-11-29 10&duration=3 HTTP/1.1\r\nHost: x\r\nUser-Agent: a b\r\n\r\n";
        let out = run(&[req]).unwrap();
        assert_eq!(
            out,
            b"GET /v2/statistic/messages?time_unit=HOUR&start=2026-11-29%2010&duration=3 HTTP/1.1\r\nHost: x\r\nUser-Agent: a b\r\n\r\n"
        );
        let plain =
            b"GET /v2/messages?count=1&begin_time=2026-11-29+10:00:00 HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(run(&[plain]).unwrap(), plain);
    }

    #[test]
    fn bodies_pass_untouched_and_the_next_head_is_found() {
        let body = "{\"event\":\"user_login\",\"username\":\"a b\"}\nGET /x y HTTP/1.1\r\n\r\n";
        let stream = format!(
            "POST /ingest/v1/events HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET /v2/a b HTTP/1.1\r\n\r\n",
            body.len()
        );
        let out = run(&[stream.as_bytes()]).unwrap();
        let want = format!(
            "POST /ingest/v1/events HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET /v2/a%20b HTTP/1.1\r\n\r\n",
            body.len()
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let chunked = "POST /i HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\na b c\r\n3\r\nd e\r\n0\r\nT: v\r\n\r\nGET /a b HTTP/1.1\r\n\r\n";
        let want = chunked.replace("/a b", "/a%20b");
        assert_eq!(
            String::from_utf8(run(&[chunked.as_bytes()]).unwrap()).unwrap(),
            want
        );
    }

    #[test]
    fn what_the_parser_would_refuse_is_refused_with_json() {
        for (req, status) in [
            (&b"GET /a HTTP/1.1\r\nContent-Length: x\r\n\r\n"[..], 400),
            (
                b"GET /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                400,
            ),
            (b"POST /a HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
            (
                b"POST /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (b"GET /a HTTP/1.1\r\nBad Header\r\n\r\n", 400),
            (b"\x01\x02\r\n\r\n", 400),
        ] {
            let r = run(&[req]).unwrap_err();
            assert_eq!(r.status, status, "{}", String::from_utf8_lossy(req));
            let resp = String::from_utf8(r.response()).unwrap();
            let (head, body) = resp.split_once("\r\n\r\n").unwrap();
            assert!(head.contains(&format!("Content-Length: {}", body.len())));
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["error"]["code"], 899003);
        }
        let many: String = (0..129).map(|i| format!("h{i}: v\r\n")).collect();
        let r = run(&[format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()]).unwrap_err();
        assert_eq!(r.status, 431);
        let big = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(70_000));
        assert_eq!(run(&[big.as_bytes()]).unwrap_err().status, 431);
        let endless = "a".repeat(70_000);
        assert_eq!(run(&[endless.as_bytes()]).unwrap_err().status, 431);
    }

    #[test]
    fn http2_passes_through() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04 a b";
        assert_eq!(run(&[preface]).unwrap(), preface);
        assert_eq!(run(&[&preface[..5], &preface[5..]]).unwrap(), preface);
    }

    proptest! {
        /// However the stream is cut into reads, the output is the same: each request's target
        /// with its inner spaces encoded, everything else byte for byte.
        #[test]
        fn any_cut_of_a_pipelined_stream_gives_the_same_output(
            reqs in proptest::collection::vec(
                ("[a-z ]{1,12}", proptest::option::of("[ -~]{0,40}"), any::<bool>()), 1..6),
            cuts in proptest::collection::vec(1usize..40, 0..30),
        ) {
            let (mut stream, mut want) = (Vec::new(), Vec::new());
            for (target, body, chunked) in &reqs {
                let target = format!("/{}", target.trim());
                let encoded = target.replace(' ', "%20");
                let (framing, bytes) = match (body, chunked) {
                    (None, _) => (String::new(), String::new()),
                    (Some(b), false) => (format!("Content-Length: {}\r\n", b.len()), b.clone()),
                    (Some(b), true) if b.is_empty() => ("Transfer-Encoding: chunked\r\n".into(), "0\r\n\r\n".into()),
                    (Some(b), true) => ("Transfer-Encoding: chunked\r\n".into(), format!("{:x}\r\n{b}\r\n0\r\n\r\n", b.len())),
                };
                stream.extend_from_slice(format!("POST {target} HTTP/1.1\r\nHost: h\r\n{framing}\r\n{bytes}").as_bytes());
                want.extend_from_slice(format!("POST {encoded} HTTP/1.1\r\nHost: h\r\n{framing}\r\n{bytes}").as_bytes());
            }
            let mut chunks = Vec::new();
            let mut rest = &stream[..];
            for c in cuts {
                let c = c.min(rest.len());
                let (a, b) = rest.split_at(c);
                chunks.push(a);
                rest = b;
            }
            chunks.push(rest);
            prop_assert_eq!(run(&chunks).unwrap(), want);
        }
    }
}
