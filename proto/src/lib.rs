//! Generated types for what the two planes exchange: the config stream
//! (`proto/config.proto`) and span export (`proto/otlp_trace.proto`), and
//! the defaults both planes assume for what a message leaves out, and the
//! OpenTelemetry settings and OTLP sender both planes use (`otel`). Nothing
//! else lives here.

#[allow(warnings, clippy::all, clippy::pedantic)]
mod generated {
    tonic::include_proto!("switchboard.config.v1");
}

pub mod config {
    //! `switchboard.config.v1`: snapshots, ACK/NACK and health reports.
    pub use super::generated::*;
}

#[allow(warnings, clippy::all, clippy::pedantic)]
mod generated_otlp {
    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
}

pub mod otlp {
    //! OTLP trace export with spans left encoded: the gateways' exporter,
    //! the control plane's receiver and its forwarder.
    pub use super::generated_otlp::*;
}

pub mod otel;

pub mod defaults {
    //! The resilience defaults, defined once: what the control plane fills
    //! in for a field a resource leaves out, and what a replica assumes for
    //! a field an older control plane does not send (zero on the wire).

    use std::time::Duration;

    /// Connections kept per replica; the pool's maximum defaults to it too.
    pub const POOL_MIN: u32 = 1;
    pub const POOL_MAX_CONCURRENCY: u32 = 32;
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
    pub const POOL_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

    pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
    pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(10 * 60);
    pub const INITIALIZE_TIMEOUT: Duration = Duration::from_secs(30);

    pub const BREAKER_CONSECUTIVE_FAILURES: u32 = 5;
    pub const BREAKER_FAILURE_RATE_PERCENT: u32 = 50;
    pub const BREAKER_MIN_REQUESTS: u32 = 20;
    pub const BREAKER_WINDOW: Duration = Duration::from_secs(30);
    pub const BREAKER_OPEN: Duration = Duration::from_secs(30);
    pub const BREAKER_HALF_OPEN_PROBES: u32 = 1;

    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(30);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
    pub const HEALTH_FAILURE_THRESHOLD: u32 = 3;
}

pub mod auth {
    //! How a caller proves itself to the control plane: a bearer token,
    //! as gRPC metadata from replicas (`authorization: Bearer <token>`) and
    //! as the same HTTP header from operators on its API.

    use std::{fmt, io::Read, net::SocketAddr, path::Path, sync::Arc};

    pub const METADATA_KEY: &str = "authorization";
    pub const BEARER_PREFIX: &str = "Bearer ";
    /// Shorter tokens are refused: they could be guessed.
    const MIN_TOKEN_LEN: usize = 16;

    /// The shared secret; never printed.
    #[derive(Clone, PartialEq, Eq)]
    pub struct Token(Arc<str>);

    #[derive(Debug, thiserror::Error)]
    pub enum TokenError {
        #[error("cannot read the token file {path}: {source}")]
        Read {
            path: String,
            source: std::io::Error,
        },
        #[error(
            "a token must be at least {MIN_TOKEN_LEN} characters (without surrounding whitespace)"
        )]
        TooShort,
        #[error("cannot make a random token: {0}")]
        Random(std::io::Error),
        #[error("a token may hold only visible ASCII characters")]
        NotAscii,
    }

    /// What a port without its token would give away, for the refusal.
    pub struct OpenPort {
        pub serves: &'static str,
        pub token: &'static str,
        pub exposes: &'static str,
        pub flags: &'static str,
    }

    impl OpenPort {
        /// A port beyond loopback needs its token, unless the operator says
        /// the network alone keeps others out: `Ok(true)` then (the caller
        /// says so at every start), `Ok(false)` when the port is guarded or
        /// on loopback, and the refusal otherwise.
        pub fn check(
            &self,
            listen: SocketAddr,
            has_token: bool,
            allowed: bool,
        ) -> Result<bool, String> {
            if has_token || listen.ip().is_loopback() {
                return Ok(false);
            }
            if !allowed {
                let Self {
                    serves,
                    token,
                    exposes,
                    flags,
                } = self;
                return Err(format!(
                    "refusing to serve {serves} on {listen} without {token}: anyone who reaches it would see {exposes} (set {flags} where the network alone keeps others out)"
                ));
            }
            Ok(true)
        }
    }

    /// Whether a URL names this machine (`localhost` or a loopback
    /// address): where a plain-text link crosses no network.
    pub fn loopback_url(url: &str) -> bool {
        url.parse::<tonic::codegen::http::Uri>()
            .ok()
            .and_then(|uri| {
                let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
                Some(
                    host == "localhost"
                        || host
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback()),
                )
            })
            .unwrap_or(false)
    }

    /// Presents the token on every call of a client:
    /// `SomeClient::with_interceptor(channel, presenting.clone())`. Clones
    /// share the token, so [`Presenting::replace`] reaches every client: a
    /// projected ServiceAccount token is rotated by the kubelet while its
    /// streams and exports go on.
    #[derive(Clone, Debug, Default)]
    pub struct Presenting(Arc<parking_lot::RwLock<Option<Token>>>);

    impl Presenting {
        pub fn new(token: Option<Token>) -> Self {
            Self(Arc::new(parking_lot::RwLock::new(token)))
        }

        /// Presents `token` from the next call on; whether it changed.
        pub fn replace(&self, token: Token) -> bool {
            let mut current = self.0.write();
            let changed = current.as_ref() != Some(&token);
            *current = Some(token);
            changed
        }
    }

    impl Token {
        pub fn new(value: &str) -> Result<Self, TokenError> {
            let value = value.trim();
            if value.len() < MIN_TOKEN_LEN {
                return Err(TokenError::TooShort);
            }
            if !value.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(TokenError::NotAscii);
            }
            Ok(Self(value.into()))
        }

        /// The token in `path` (a mounted Secret, say), whitespace trimmed.
        pub fn read(path: &Path) -> Result<Self, TokenError> {
            let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
                path: path.display().to_string(),
                source,
            })?;
            Self::new(&text)
        }

        /// The token in `--<flag>` file if given, else in the environment
        /// variable `env` (a value, never a flag: flags show in `ps`).
        pub fn from_file_or_env(
            file: Option<&Path>,
            env: &str,
        ) -> Result<Option<Self>, TokenError> {
            if let Some(path) = file {
                return Self::read(path).map(Some);
            }
            match std::env::var(env) {
                Ok(value) if !value.is_empty() => Self::new(&value).map(Some),
                _ => Ok(None),
            }
        }

        /// 32 random bytes from the kernel, hex-encoded.
        pub fn generate() -> Result<Self, TokenError> {
            let mut bytes = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut random| random.read_exact(&mut bytes))
                .map_err(TokenError::Random)?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            Ok(Self(hex.into()))
        }

        /// The value, to send or to hand to a process this one starts.
        pub fn expose(&self) -> &str {
            &self.0
        }

        /// The metadata value a call carries.
        pub fn bearer(&self) -> String {
            format!("{BEARER_PREFIX}{}", self.0)
        }

        /// Whether an `authorization` value (`Bearer <token>`, if any was
        /// sent) presents this token.
        pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
            authorization
                .and_then(|v| v.strip_prefix(BEARER_PREFIX.as_bytes()))
                .is_some_and(|presented| self.matches(presented))
        }

        /// Compares without stopping at the first difference, so the time
        /// a refusal takes says nothing about how much of a guess was right.
        pub fn matches(&self, presented: &[u8]) -> bool {
            let expected = self.0.as_bytes();
            expected.len() == presented.len()
                && expected
                    .iter()
                    .zip(presented)
                    .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                    == 0
        }
    }

    impl fmt::Debug for Token {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Token(redacted)")
        }
    }

    impl tonic::service::Interceptor for Presenting {
        fn call(
            &mut self,
            mut request: tonic::Request<()>,
        ) -> Result<tonic::Request<()>, tonic::Status> {
            if let Some(token) = &*self.0.read() {
                // Visible ASCII only (checked in `new`), so it always parses.
                let value = token
                    .bearer()
                    .parse()
                    .map_err(|_| tonic::Status::internal("the token is not ASCII"))?;
                request.metadata_mut().insert(METADATA_KEY, value);
            }
            Ok(request)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn only_urls_naming_this_machine_are_loopback() {
            for url in [
                "http://127.0.0.1:8788",
                "https://localhost/x",
                "http://[::1]:80/",
                "http://127.9.9.9",
            ] {
                assert!(loopback_url(url), "{url}");
            }
            for url in [
                "http://10.0.0.1",
                "http://localhost.evil.test",
                "http://[::2]/",
                "not a url",
                "",
            ] {
                assert!(!loopback_url(url), "{url}");
            }
        }

        #[test]
        fn only_the_bearer_form_of_the_token_is_admitted() {
            let token = Token::new("a-token-of-sixteen-plus").expect("long enough");
            assert!(token.admits(Some(b"Bearer a-token-of-sixteen-plus")));
            for refused in [
                None,
                Some(&b"a-token-of-sixteen-plus"[..]),
                Some(b"bearer a-token-of-sixteen-plus"),
                Some(b"Bearer a-token-of-sixteen-plu"),
                Some(b"Bearer a-token-of-sixteen-plus "),
            ] {
                assert!(!token.admits(refused), "{refused:?}");
            }
        }
    }
}
