//! Just enough HTTP/1.1 for the server, on `std::net`: request heads read within a size
//! budget, bodies framed by `Content-Length` or chunked encoding and never read past a limit,
//! keep-alive, a thread per connection, a bound on handlers running at once, and a stop that
//! lets requests in flight finish.
//!
//! A body over the limit is left unread and its connection closed after the answer (what the
//! client still sends meanwhile is dropped for a short while, so that it can read the
//! answer), so a client that declares a huge `Content-Length` costs nothing but the answer.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most bytes of a request line and its headers together.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most bytes of a chunk-size line or of a chunked body's trailer.
const MAX_CHUNK_LINE_BYTES: usize = 1024;
/// How long a connection may sit without sending a byte before it is closed.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client may take to accept a response's bytes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection closed on unread input keeps reading (and dropping) what the client
/// still sends, so that it can read the answer.
const LINGER: Duration = Duration::from_secs(2);

/// Answers requests; implemented by the server's routes.
pub(super) trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: &Request) -> Response;
    /// Answers a request that could not be read or handled, with a status and a reason.
    fn reject(&self, status: u16, message: &str) -> Response;
}

/// One request, its body read (or refused) already.
#[derive(Debug)]
pub(super) struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The request target, query included.
    pub target: String,
    /// Headers in the order sent; names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, or why it was not read.
    pub body: Result<Vec<u8>, BodyError>,
}

impl Request {
    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(path, _)| path)
    }

    /// The first header of a name, compared without case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request's body was not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum BodyError {
    /// The body is over the limit (declared so, or found so while reading chunks).
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body's framing is broken.
    Malformed(String),
}

/// A response: its status, headers (without `Content-Length` and `Connection`, which are
/// added) and body.
#[derive(Debug)]
pub(super) struct Response {
    /// The status code.
    pub status: u16,
    /// Headers to send.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// The listener's limits.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Most body bytes read per request.
    pub max_body_bytes: usize,
    /// Most handlers running at once, over all connections.
    pub max_handlers: usize,
}

/// A listening socket with its accept thread and connection threads.
pub(super) struct Listener {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// What the accept thread and every connection thread share.
struct Shared {
    stopping: AtomicBool,
    limits: Limits,
    gate: Gate,
    connections: Connections,
}

impl Listener {
    /// Starts accepting on a bound socket and serving each connection on its own thread.
    pub fn start(socket: TcpListener, handler: Arc<dyn Handler>, limits: Limits) -> io::Result<Self> {
        let addr = socket.local_addr()?;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            limits,
            gate: Gate::new(limits.max_handlers),
            connections: Connections::default(),
        });
        let accepting = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("memr2-openai-accept".to_string())
            .spawn(move || accept_loop(&socket, &handler, &accepting))?;
        Ok(Self {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// Stops accepting, closes idle connections, waits for requests in flight to be
    /// answered. Returns once every connection thread is done: `true` when the accept thread
    /// (and the handler it holds) is gone too, `false` when it could not be woken and was left
    /// behind.
    pub fn stop(&mut self) -> bool {
        let Some(accept) = self.accept.take() else {
            return true;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // The accept thread sits in accept(): a connection of our own wakes it.
        let woken = match TcpStream::connect_timeout(&reachable(self.addr), Duration::from_secs(1)) {
            Ok(_) => {
                if accept.join().is_err() {
                    tracing::error!("the accept thread panicked");
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "could not wake the accept thread; leaving it behind");
                false
            }
        };
        self.shared.connections.end_all_and_wait();
        woken
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The address to connect to for reaching a socket bound to `addr` (loopback for a wildcard).
fn reachable(addr: SocketAddr) -> SocketAddr {
    let mut target = addr;
    if addr.ip().is_unspecified() {
        target.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    target
}

fn accept_loop(socket: &TcpListener, handler: &Arc<dyn Handler>, shared: &Arc<Shared>) {
    for (id, incoming) in (0u64..).zip(socket.incoming()) {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        match incoming {
            Ok(stream) => open_connection(id, stream, handler, shared),
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "could not accept a connection");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Registers a connection and serves it on a thread of its own.
fn open_connection(id: u64, stream: TcpStream, handler: &Arc<dyn Handler>, shared: &Arc<Shared>) {
    let registration = match stream.try_clone() {
        Ok(clone) => shared.connections.register(id, clone, Arc::clone(shared)),
        Err(e) => {
            tracing::warn!(error = %e, "could not register a connection");
            return;
        }
    };
    let handler = Arc::clone(handler);
    let spawned = std::thread::Builder::new()
        .name(format!("memr2-openai-conn-{id}"))
        .spawn(move || {
            let registration = registration;
            if let Err(e) = serve_connection(stream, &*handler, &registration.shared) {
                tracing::debug!(error = %e, "connection ended");
            }
            // Before the registration goes: a stop waits for it, then for the last handler.
            drop(handler);
        });
    if let Err(e) = spawned {
        // The closure, the stream and the registration went with the failed spawn.
        tracing::warn!(error = %e, "could not start a connection thread");
    }
}

/// Serves one connection's requests in turn until it closes, breaks, or the listener stops.
fn serve_connection(stream: TcpStream, handler: &dyn Handler, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    // Answers go out whole; Nagle would only delay them.
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = BufWriter::new(stream);
    loop {
        let head = match read_head(&mut reader) {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(()),
            Err(HeadError::Stream(e)) => return Err(e),
            Err(HeadError::Bad { status, message }) => {
                let response = handler.reject(status, &message);
                write_response(&mut writer, &response, false, false)?;
                linger(writer.get_ref(), &mut reader);
                return Ok(());
            }
        };
        let body = read_body(&mut reader, &mut writer, &head, shared.limits.max_body_bytes)?;
        // A refused body was left unread: nothing after it on this connection can be framed.
        let unread = body.is_err();
        let keep_alive = head.keep_alive && !unread;
        let head_only = head.method == "HEAD";
        let request = Request {
            method: head.method,
            target: head.target,
            headers: head.headers,
            body,
        };
        let response = {
            let _pass = shared.gate.enter();
            catch_unwind(AssertUnwindSafe(|| handler.handle(&request))).unwrap_or_else(|_| {
                tracing::error!(target = request.target, "a request handler panicked");
                handler.reject(500, "the server failed on this request")
            })
        };
        let keep_alive = keep_alive && !shared.stopping.load(Ordering::SeqCst);
        write_response(&mut writer, &response, head_only, keep_alive)?;
        if unread {
            linger(writer.get_ref(), &mut reader);
        }
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Closes the sending side, then reads and throws away what the client still sends (a body
/// that was refused unread, say) for up to [`LINGER`]. Closing a socket with unread input
/// resets the connection, and a client still sending would lose the answer with it.
fn linger(stream: &TcpStream, reader: &mut impl Read) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A request line and headers.
#[derive(Debug)]
struct Head {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    keep_alive: bool,
}

#[derive(Debug)]
enum HeadError {
    /// The stream failed or ended mid-request: nobody to answer.
    Stream(io::Error),
    /// The request cannot be read; answer with this status, then close.
    Bad { status: u16, message: String },
}

impl HeadError {
    fn bad(message: impl Into<String>) -> Self {
        HeadError::Bad {
            status: 400,
            message: message.into(),
        }
    }
}

/// Reads a request line and headers within [`MAX_HEAD_BYTES`]; `None` when the client closed
/// the connection between requests.
fn read_head(reader: &mut impl BufRead) -> Result<Option<Head>, HeadError> {
    let mut budget = MAX_HEAD_BYTES;
    // A client may send empty lines between requests (RFC 9112, section 2.2).
    let line = loop {
        match read_line(reader, &mut budget)? {
            None => return Ok(None),
            Some(line) if line.is_empty() => continue,
            Some(line) => break line,
        }
    };
    let line = String::from_utf8(line).map_err(|_| HeadError::bad("the request line is not UTF-8"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::bad("the request line is not `METHOD target HTTP/1.1`"));
    };
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(HeadError::bad("the request method is not a token"));
    }
    if target.is_empty() || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(HeadError::bad(
            "the request target is empty or holds control characters",
        ));
    }
    let http_1_1 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => {
            return Err(HeadError::Bad {
                status: 505,
                message: format!("{version} is not supported; use HTTP/1.1"),
            });
        }
    };

    let mut headers = Vec::new();
    loop {
        let Some(line) = read_line(reader, &mut budget)? else {
            return Err(HeadError::Stream(io::ErrorKind::UnexpectedEof.into()));
        };
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            return Err(HeadError::bad("folded header lines are not supported"));
        }
        let line = String::from_utf8(line).map_err(|_| HeadError::bad("a header is not UTF-8"))?;
        let Some((name, value)) = line.split_once(':') else {
            return Err(HeadError::bad("a header line has no colon"));
        };
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(HeadError::bad("a header name is not a token"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }

    let connection = |option: &str| {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| v.split(','))
            .any(|o| o.trim().eq_ignore_ascii_case(option))
    };
    let keep_alive = if http_1_1 {
        !connection("close")
    } else {
        connection("keep-alive")
    };
    Ok(Some(Head {
        method: method.to_string(),
        target: target.to_string(),
        headers,
        keep_alive,
    }))
}

/// `tchar` of RFC 9110: the characters of methods and header names.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads one line, without its `\r\n` or `\n`, taking its bytes from `budget`. `None` when the
/// stream ends before the line starts; a line over the budget is a 431.
fn read_line(reader: &mut impl BufRead, budget: &mut usize) -> Result<Option<Vec<u8>>, HeadError> {
    let mut line = Vec::new();
    let read = reader
        .take(*budget as u64)
        .read_until(b'\n', &mut line)
        .map_err(HeadError::Stream)?;
    if read == 0 {
        return if *budget == 0 {
            Err(too_long_head())
        } else {
            Ok(None)
        };
    }
    *budget -= read;
    if line.pop() != Some(b'\n') {
        return Err(if *budget == 0 {
            too_long_head()
        } else {
            HeadError::Stream(io::ErrorKind::UnexpectedEof.into())
        });
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

fn too_long_head() -> HeadError {
    HeadError::Bad {
        status: 431,
        message: format!("the request line and headers are over {MAX_HEAD_BYTES} bytes"),
    }
}

/// Reads the body the head announces, at most `limit` bytes of it. The outer error is the
/// stream's (nobody left to answer); the inner one the request's.
fn read_body(
    reader: &mut impl BufRead,
    writer: &mut impl Write,
    head: &Head,
    limit: usize,
) -> io::Result<Result<Vec<u8>, BodyError>> {
    let values = |name: &'static str| {
        head.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let chunked = match values("transfer-encoding").next_back() {
        None => false,
        Some(codings)
            if codings
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked")) =>
        {
            true
        }
        Some(codings) => {
            return Ok(Err(BodyError::Malformed(format!(
                "transfer encoding `{codings}` is not supported"
            ))));
        }
    };
    let length = if chunked {
        None
    } else {
        match content_length(values("content-length")) {
            Ok(length) => length,
            Err(message) => return Ok(Err(BodyError::Malformed(message))),
        }
    };
    if length.is_some_and(|n| n > limit as u64) {
        return Ok(Err(BodyError::TooLarge { limit }));
    }
    let expects_continue = values("expect").any(|v| v.eq_ignore_ascii_case("100-continue"));
    if expects_continue && (chunked || length.is_some_and(|n| n > 0)) {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        writer.flush()?;
    }
    match length {
        _ if chunked => read_chunked(reader, limit),
        None | Some(0) => Ok(Ok(Vec::new())),
        Some(length) => {
            let mut body = vec![0; length as usize];
            reader.read_exact(&mut body)?;
            Ok(Ok(body))
        }
    }
}

/// The declared `Content-Length`: every one given must be the same number.
fn content_length<'a>(values: impl Iterator<Item = &'a str>) -> Result<Option<u64>, String> {
    let mut length = None;
    for value in values.flat_map(|v| v.split(',')) {
        let value = value.trim();
        let parsed = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
            .then(|| value.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| format!("Content-Length `{value}` is not a number"))?;
        if length.is_some_and(|l| l != parsed) {
            return Err("the request gives different Content-Lengths".to_string());
        }
        length = Some(parsed);
    }
    Ok(length)
}

/// Decodes a chunked body, refusing it as soon as it passes `limit`.
fn read_chunked(reader: &mut impl BufRead, limit: usize) -> io::Result<Result<Vec<u8>, BodyError>> {
    let malformed = |message: &str| Ok(Err(BodyError::Malformed(message.to_string())));
    let mut body = Vec::new();
    loop {
        let line = match chunk_line(reader)? {
            Some(line) => line,
            None => return malformed("a chunk-size line is too long"),
        };
        let digits = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return malformed("a chunk size is not a hexadecimal number");
        }
        let size = digits.iter().fold(0u64, |size, &d| {
            size * 16 + u64::from((d as char).to_digit(16).unwrap_or(0))
        });
        if size == 0 {
            // Trailer fields, up to the empty line; ignored.
            loop {
                match chunk_line(reader)? {
                    Some(line) if line.is_empty() => return Ok(Ok(body)),
                    Some(_) => {}
                    None => return malformed("a trailer line is too long"),
                }
            }
        }
        if body.len() as u64 + size > limit as u64 {
            return Ok(Err(BodyError::TooLarge { limit }));
        }
        let start = body.len();
        body.resize(start + size as usize, 0);
        reader.read_exact(&mut body[start..])?;
        match chunk_line(reader)? {
            Some(line) if line.is_empty() => {}
            _ => return malformed("a chunk does not end with CRLF"),
        }
    }
}

/// A line of chunked framing within [`MAX_CHUNK_LINE_BYTES`]; `None` when it is longer.
fn chunk_line(reader: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut budget = MAX_CHUNK_LINE_BYTES;
    match read_line(reader, &mut budget) {
        Ok(Some(line)) => Ok(Some(line)),
        Ok(None) => Err(io::ErrorKind::UnexpectedEof.into()),
        Err(HeadError::Stream(e)) => Err(e),
        Err(HeadError::Bad { .. }) => Ok(None),
    }
}

fn write_response(
    writer: &mut impl Write,
    response: &Response,
    head_only: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", response.status, reason(response.status));
    for (name, value) in &response.headers {
        // Values come from the server's own code; a line break would split the response.
        if !value.contains(['\r', '\n']) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    head.push_str(if keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    writer.write_all(head.as_bytes())?;
    if !head_only {
        writer.write_all(&response.body)?;
    }
    writer.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Lets at most a number of handlers run at once.
struct Gate {
    most: usize,
    running: Mutex<usize>,
    freed: Condvar,
}

/// A place among a [`Gate`]'s running handlers, given back on drop.
struct Pass<'a>(&'a Gate);

impl Gate {
    fn new(most: usize) -> Self {
        Self {
            most: most.max(1),
            running: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    fn enter(&self) -> Pass<'_> {
        let mut running = lock(&self.running);
        while *running >= self.most {
            running = self.freed.wait(running).unwrap_or_else(PoisonError::into_inner);
        }
        *running += 1;
        Pass(self)
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        *lock(&self.0.running) -= 1;
        self.0.freed.notify_one();
    }
}

/// The open connections (a handle on each socket), so that a stop can end their waits for
/// another request and then wait for them to finish.
#[derive(Default)]
struct Connections {
    open: Mutex<HashMap<u64, TcpStream>>,
    closed: Condvar,
}

/// A connection's place in [`Connections`], removed on drop (also when its thread panics).
struct Registration {
    id: u64,
    shared: Arc<Shared>,
}

impl Connections {
    fn register(&self, id: u64, stream: TcpStream, shared: Arc<Shared>) -> Registration {
        lock(&self.open).insert(id, stream);
        Registration { id, shared }
    }

    /// Ends every connection's reading (a thread waiting for a request sees the end of the
    /// stream; one handling a request answers it first), then waits until all are closed.
    fn end_all_and_wait(&self) {
        let mut open = lock(&self.open);
        for stream in open.values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
        while !open.is_empty() {
            open = self.closed.wait(open).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let connections = &self.shared.connections;
        lock(&connections.open).remove(&self.id);
        connections.closed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, HeadError> {
        read_head(&mut text.as_bytes())
    }

    fn body(request: &str, limit: usize) -> io::Result<Result<Vec<u8>, BodyError>> {
        let mut reader = request.as_bytes();
        let head = read_head(&mut reader).unwrap().unwrap();
        read_body(&mut reader, &mut Vec::new(), &head, limit)
    }

    fn status(error: Result<Option<Head>, HeadError>) -> u16 {
        match error {
            Err(HeadError::Bad { status, .. }) => status,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_head_parses_with_its_headers_and_keep_alive() {
        let parsed = head("\r\nPOST /v1/x?a=1 HTTP/1.1\r\nHost: h\r\nX-Thing:  v \r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (parsed.method.as_str(), parsed.target.as_str()),
            ("POST", "/v1/x?a=1")
        );
        assert_eq!(parsed.headers[1], ("X-Thing".to_string(), "v".to_string()));
        assert!(parsed.keep_alive);
        assert!(
            !head("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(
            head("GET / HTTP/1.0\nConnection: keep-alive\n\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(head("").unwrap().is_none());
    }

    #[test]
    fn bad_heads_are_400_431_or_505() {
        assert_eq!(status(head("GET /\r\n\r\n")), 400);
        assert_eq!(status(head("GET  / HTTP/1.1\r\n\r\n")), 400);
        assert_eq!(status(head("G(T / HTTP/1.1\r\n\r\n")), 400);
        assert_eq!(status(head("GET / HTTP/1.1\r\nno colon\r\n\r\n")), 400);
        assert_eq!(status(head("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n")), 400);
        assert_eq!(status(head("GET / HTTP/2.0\r\n\r\n")), 505);
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(status(head(&huge)), 431);
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEAD_BYTES / 6 + 1)
        );
        assert_eq!(status(head(&many)), 431);
        assert!(matches!(
            head("GET / HTTP/1.1\r\nA: b"),
            Err(HeadError::Stream(_))
        ));
    }

    #[test]
    fn bodies_are_read_by_length_or_chunks_within_the_limit() {
        let by_length = body("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 5);
        assert_eq!(by_length.unwrap(), Ok(b"hello".to_vec()));
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n";
        assert_eq!(body(chunked, 11).unwrap(), Ok(b"hello world".to_vec()));
        assert_eq!(body(chunked, 10).unwrap(), Err(BodyError::TooLarge { limit: 10 }));
        assert_eq!(body("GET / HTTP/1.1\r\n\r\n", 0).unwrap(), Ok(Vec::new()));
    }

    #[test]
    fn a_huge_declared_length_is_refused_without_reading() {
        let request = "POST / HTTP/1.1\r\nContent-Length: 18446744073709551615\r\n\r\nab";
        assert_eq!(body(request, 10).unwrap(), Err(BodyError::TooLarge { limit: 10 }));
        let request = "POST / HTTP/1.1\r\nContent-Length: 100000000000000000000\r\n\r\nab";
        assert!(matches!(body(request, 10).unwrap(), Err(BodyError::Malformed(_))));
    }

    #[test]
    fn broken_framing_is_malformed() {
        for request in [
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
        ] {
            assert!(
                matches!(body(request, 100).unwrap(), Err(BodyError::Malformed(_))),
                "{request:?}"
            );
        }
        assert!(body("POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nshort", 100).is_err());
    }

    #[test]
    fn expect_continue_is_answered_before_the_body_is_read() {
        let mut reader = &b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok"[..];
        let head = read_head(&mut reader).unwrap().unwrap();
        let mut written = Vec::new();
        assert_eq!(
            read_body(&mut reader, &mut written, &head, 10).unwrap(),
            Ok(b"ok".to_vec())
        );
        assert_eq!(written, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn a_response_has_its_length_and_connection() {
        let response = Response {
            status: 404,
            headers: vec![
                ("Content-Type", "application/json".to_string()),
                ("X-Bad", "a\r\nb".to_string()),
            ],
            body: b"{}".to_vec(),
        };
        let mut written = Vec::new();
        write_response(&mut written, &response, false, true).unwrap();
        assert_eq!(
            String::from_utf8(written).unwrap(),
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"
        );
        let mut written = Vec::new();
        write_response(&mut written, &response, true, false).unwrap();
        assert!(
            String::from_utf8(written)
                .unwrap()
                .ends_with("Connection: close\r\n\r\n")
        );
    }
}
