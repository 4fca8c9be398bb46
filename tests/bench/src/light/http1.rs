//! HTTP/1.1 for the light driver on a plain `TcpStream`: request bytes
//! built once per connection with a fixed-width JSON-RPC id patched in
//! place, and responses framed by `Content-Length` or chunked encoding.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{Error, PROTOCOL_VERSION};

/// Where the HTTP requests go: `http://{addr}{path}`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The `Host` header value (`127.0.0.1:port`).
    pub host: String,
    pub path: String,
}

/// One POST, whole, with the digits of its JSON-RPC id at a known offset.
pub struct Request {
    bytes: Vec<u8>,
    id_at: usize,
}

/// Status line and the headers the driver acts on; the body stays in the
/// connection ([`Connection::body`]).
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    /// `Content-Type: text/event-stream`.
    pub sse: bool,
    /// `Mcp-Session-Id`, captured only when asked for.
    pub session: Option<String>,
    /// `Connection: close`, or a body that ends with the connection.
    pub closes: bool,
}

/// A kept-alive connection with its read buffer.
pub struct Connection {
    stream: TcpStream,
    /// Bytes read and not yet consumed are `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last response's body, de-chunked.
    body: Vec<u8>,
}

enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// First id of every connection: ids stay 8 digits wide (up to
/// 99,999,999), so a request's length never changes and its bytes are
/// patched in place rather than rebuilt.
pub const FIRST_ID: u64 = 10_000_000;
pub const LAST_ID: u64 = 99_999_999;
const ID_WIDTH: usize = 8;
/// Read granularity; a buffer grows past it only for a larger body.
const READ_CHUNK: usize = 16 * 1024;

// === impl Endpoint ===

impl Endpoint {
    /// Parses `http://host:port/path` with a literal socket address (the
    /// harness only ever points at loopback listeners it started).
    pub fn parse(url: &str) -> Option<Self> {
        let rest = url.strip_prefix("http://")?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr: SocketAddr = authority.parse().ok()?;
        let path = if path.is_empty() { "/" } else { path };
        Some(Self {
            addr,
            host: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

// === impl Request ===

impl Request {
    /// A POST of `body` as JSON, with the session headers when `session`
    /// is set. Its id cannot be patched (`id_at` points at nothing).
    pub fn post(endpoint: &Endpoint, session: Option<&str>, body: &[u8]) -> Self {
        let mut bytes = head(endpoint, "POST", session);
        bytes.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
        bytes.extend_from_slice(body.len().to_string().as_bytes());
        bytes.extend_from_slice(b"\r\n\r\n");
        bytes.extend_from_slice(body);
        Self { bytes, id_at: 0 }
    }

    /// A JSON-RPC request `{"jsonrpc":"2.0","id":<id>,"method":..,"params":..}`
    /// whose id is set per send with [`Request::set_id`].
    pub fn rpc(endpoint: &Endpoint, session: Option<&str>, method: &str, params: &[u8]) -> Self {
        let body = rpc_body(method, params);
        let mut request = Self::post(endpoint, session, &body.bytes);
        request.id_at = request.bytes.len() - body.bytes.len() + body.id_at;
        request
    }

    /// `DELETE` of the session.
    pub fn delete(endpoint: &Endpoint, session: &str) -> Self {
        let mut bytes = head(endpoint, "DELETE", Some(session));
        bytes.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        Self { bytes, id_at: 0 }
    }

    /// Writes `id` (from [`FIRST_ID`] to 99,999,999) over the id digits.
    pub fn set_id(&mut self, id: u64) {
        debug_assert!((FIRST_ID..=LAST_ID).contains(&id));
        write_id(&mut self.bytes[self.id_at..self.id_at + ID_WIDTH], id);
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// A JSON-RPC request line (no framing) with its id digits at `id_at`;
/// shared with the stdio driver.
pub struct RpcBody {
    pub bytes: Vec<u8>,
    pub id_at: usize,
}

pub fn rpc_body(method: &str, params: &[u8]) -> RpcBody {
    let mut bytes = br#"{"jsonrpc":"2.0","id":"#.to_vec();
    let id_at = bytes.len();
    bytes.extend_from_slice(FIRST_ID.to_string().as_bytes());
    bytes.extend_from_slice(br#","method":"#);
    // A method name is a plain identifier; quoting it needs no escaping.
    bytes.push(b'"');
    bytes.extend_from_slice(method.as_bytes());
    bytes.extend_from_slice(br#"","params":"#);
    bytes.extend_from_slice(params);
    bytes.push(b'}');
    RpcBody { bytes, id_at }
}

/// The 8 decimal digits of `id` into `digits`.
pub fn write_id(digits: &mut [u8], mut id: u64) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (id % 10) as u8;
        id /= 10;
    }
}

fn head(endpoint: &Endpoint, method: &str, session: Option<&str>) -> Vec<u8> {
    let mut bytes = format!(
        "{method} {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json, text/event-stream\r\n",
        endpoint.path, endpoint.host
    )
    .into_bytes();
    if let Some(session) = session {
        bytes.extend_from_slice(
            format!("Mcp-Session-Id: {session}\r\nMCP-Protocol-Version: {PROTOCOL_VERSION}\r\n")
                .as_bytes(),
        );
    }
    bytes
}

// === impl Connection ===

impl Connection {
    pub async fn open(endpoint: &Endpoint) -> Result<Self, Error> {
        let stream = TcpStream::connect(endpoint.addr).await?;
        // Each request is one write; without this, Nagle holds a write
        // that follows an unacknowledged one.
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: vec![0; READ_CHUNK],
            start: 0,
            end: 0,
            body: Vec::with_capacity(READ_CHUNK),
        })
    }

    /// Sends `request` and reads the whole response (up to the last byte
    /// of a chunked SSE stream).
    pub async fn exchange(&mut self, request: &[u8], want_session: bool) -> Result<Head, Error> {
        self.stream.write_all(request).await?;
        self.read_response(want_session).await
    }

    /// The body of the last response read.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    async fn read_response(&mut self, want_session: bool) -> Result<Head, Error> {
        // Bytes past `start` already searched; an offset from `start`
        // because `fill` may move the unread bytes to the buffer's front.
        let mut scanned: usize = 0;
        let header_end = loop {
            // Resume 3 bytes back: the terminator may straddle two reads.
            let from = self.start + scanned.saturating_sub(3);
            if let Some(i) = find(&self.buf[from..self.end], b"\r\n\r\n") {
                break from + i + 4;
            }
            scanned = self.end - self.start;
            self.fill().await?;
        };
        let (mut head, framing) = parse_head(&self.buf[self.start..header_end], want_session)?;
        self.start = header_end;
        self.body.clear();
        match framing {
            Framing::Empty => {}
            Framing::Length(n) => {
                self.need(n).await?;
                self.body
                    .extend_from_slice(&self.buf[self.start..self.start + n]);
                self.start += n;
            }
            Framing::Chunked => self.read_chunked().await?,
            Framing::UntilClose => {
                head.closes = true;
                loop {
                    self.body.extend_from_slice(&self.buf[self.start..self.end]);
                    self.start = self.end;
                    match self.fill().await {
                        Ok(()) => {}
                        Err(Error::Closed) => break,
                        Err(err) => return Err(err),
                    }
                }
            }
        }
        Ok(head)
    }

    async fn read_chunked(&mut self) -> Result<(), Error> {
        loop {
            let line = self.line().await?;
            let size_hex = self.buf[line.clone()]
                .split(|b| *b == b';')
                .next()
                .unwrap_or_default();
            let size = std::str::from_utf8(size_hex)
                .ok()
                .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
                .ok_or(Error::Malformed("chunk size"))?;
            if size == 0 {
                // Trailers, if any, up to the empty line.
                while !self.line().await?.is_empty() {}
                return Ok(());
            }
            self.need(size + 2).await?;
            let chunk = &self.buf[self.start..self.start + size + 2];
            if !chunk.ends_with(b"\r\n") {
                return Err(Error::Malformed("chunk not followed by CRLF"));
            }
            self.body.extend_from_slice(&chunk[..size]);
            self.start += size + 2;
        }
    }

    /// Consumes the next CRLF-terminated line; where it lies in `buf`,
    /// without its CRLF (valid until the next read).
    async fn line(&mut self) -> Result<std::ops::Range<usize>, Error> {
        loop {
            if let Some(i) = find(&self.buf[self.start..self.end], b"\r\n") {
                let line = self.start..self.start + i;
                self.start += i + 2;
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// Reads until at least `n` unconsumed bytes are buffered.
    async fn need(&mut self, n: usize) -> Result<(), Error> {
        while self.end - self.start < n {
            if self.buf.len() - self.start < n {
                self.compact();
                if self.buf.len() < n {
                    self.buf.resize(n.max(READ_CHUNK), 0);
                }
            }
            self.fill().await?;
        }
        Ok(())
    }

    /// One read into the free tail of the buffer, making room first.
    async fn fill(&mut self) -> Result<(), Error> {
        if self.end == self.buf.len() {
            self.compact();
            if self.end == self.buf.len() {
                let grown = self.buf.len() * 2;
                self.buf.resize(grown, 0);
            }
        }
        match self.stream.read(&mut self.buf[self.end..]).await? {
            0 => Err(Error::Closed),
            n => {
                self.end += n;
                Ok(())
            }
        }
    }

    fn compact(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }
}

/// Status and framing from the bytes up to and including the empty line.
fn parse_head(bytes: &[u8], want_session: bool) -> Result<(Head, Framing), Error> {
    let text = std::str::from_utf8(bytes).map_err(|_| Error::Malformed("non-UTF-8 head"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or(Error::Malformed("status line"))?;
    let mut head = Head {
        status,
        sse: false,
        session: None,
        closes: false,
    };
    let (mut length, mut chunked) = (None, false);
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or(Error::Malformed("header line"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| Error::Malformed("Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-type") {
            head.sse = value
                .get(..17)
                .is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"));
        } else if name.eq_ignore_ascii_case("connection") {
            head.closes = value.eq_ignore_ascii_case("close");
        } else if want_session && name.eq_ignore_ascii_case("mcp-session-id") {
            head.session = Some(value.to_owned());
        }
    }
    // RFC 9112 §6.3: these carry no body whatever the headers say, and
    // chunked encoding takes precedence over a length.
    let framing = if matches!(status, 100..=199 | 204 | 304) {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok((head, framing))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_request_patches_its_id_in_place() {
        let endpoint = Endpoint::parse("http://127.0.0.1:9/mcp").expect("valid url");
        let mut request = Request::rpc(&endpoint, Some("s1"), "tools/call", b"{}");
        request.set_id(12_345_678);
        let text = String::from_utf8(request.bytes().to_vec()).expect("ascii");
        assert!(text.starts_with("POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:9\r\n"));
        assert!(text.contains("Mcp-Session-Id: s1\r\n"));
        let body = r#"{"jsonrpc":"2.0","id":12345678,"method":"tools/call","params":{}}"#;
        assert!(text.ends_with(&format!("Content-Length: {}\r\n\r\n{body}", body.len())));
    }

    #[test]
    fn head_framing() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nmcp-session-id: abc\r\n\r\n";
        let (head, framing) = parse_head(head, true).expect("valid head");
        assert_eq!(head.status, 200);
        assert!(head.sse);
        assert_eq!(head.session.as_deref(), Some("abc"));
        assert!(matches!(framing, Framing::Chunked));
        let (_, framing) = parse_head(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n", false)
            .expect("valid head");
        assert!(matches!(framing, Framing::Length(0)));
        assert!(parse_head(b"SSH-2.0\r\n\r\n", false).is_err());
    }
}
