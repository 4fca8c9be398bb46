//! Console logins: a one-time code that `up` prints in the console's URL,
//! redeemed once for a console session token. The browser then presents
//! that token as `authorization: Bearer …` like any API caller, so the
//! admin token itself never reaches a browser's storage or history, and a
//! session ends on its own ([`SESSION_TTL`]) or when its user logs out.
//! Only digests of session tokens are kept.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use proto::auth::{BEARER_PREFIX, Token, TokenError};
use sha2::{Digest, Sha256};

/// How long a code printed at start can be redeemed: it sits in a
/// terminal's scrollback, so not long.
const CODE_TTL: Duration = Duration::from_secs(15 * 60);
/// How long a console session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Sessions kept at once; the oldest goes first beyond it.
const MAX_SESSIONS: usize = 64;

/// Codes not yet redeemed and live console sessions; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Logins {
    inner: Arc<Mutex<Table>>,
}

#[derive(Debug, Default)]
struct Table {
    codes: Vec<(Token, Instant)>,
    /// Digest of a session token → when it expires.
    sessions: HashMap<[u8; 32], Instant>,
}

// === impl Logins ===

impl Logins {
    /// A fresh code, redeemable once within [`CODE_TTL`].
    pub fn one_time_code(&self) -> Result<Token, TokenError> {
        let code = Token::generate()?;
        let mut table = self.inner.lock();
        let now = Instant::now();
        table.codes.retain(|(_, expires)| *expires > now);
        table.codes.push((code.clone(), now + CODE_TTL));
        Ok(code)
    }

    /// Exchanges a code for a session token; `None` for a code that is
    /// wrong, expired or already used.
    pub fn redeem(&self, code: &str) -> Option<Token> {
        {
            let mut table = self.inner.lock();
            let now = Instant::now();
            table.codes.retain(|(_, expires)| *expires > now);
            let at = table
                .codes
                .iter()
                .position(|(known, _)| known.matches(code.as_bytes()))?;
            table.codes.swap_remove(at);
        }
        self.start()
    }

    /// A new session, for a caller that proved itself otherwise (the
    /// admin token); the oldest goes beyond [`MAX_SESSIONS`].
    pub fn start(&self) -> Option<Token> {
        let session = Token::generate().ok()?;
        let mut table = self.inner.lock();
        let now = Instant::now();
        table.sessions.retain(|_, expires| *expires > now);
        if table.sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = table
                .sessions
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(digest, _)| *digest)
        {
            table.sessions.remove(&oldest);
        }
        table
            .sessions
            .insert(digest(session.expose().as_bytes()), now + SESSION_TTL);
        Some(session)
    }

    /// Whether `authorization` presents a live session token.
    pub fn admits(&self, authorization: Option<&[u8]>) -> bool {
        let Some(presented) = bearer(authorization) else {
            return false;
        };
        let digest = digest(presented);
        let mut table = self.inner.lock();
        match table.sessions.get(&digest) {
            Some(expires) if *expires > Instant::now() => true,
            Some(_) => {
                table.sessions.remove(&digest);
                false
            }
            None => false,
        }
    }

    /// Ends the session `authorization` presents; whether there was one.
    pub fn end(&self, authorization: Option<&[u8]>) -> bool {
        bearer(authorization).is_some_and(|presented| {
            self.inner
                .lock()
                .sessions
                .remove(&digest(presented))
                .is_some()
        })
    }
}

fn bearer(authorization: Option<&[u8]>) -> Option<&[u8]> {
    authorization?.strip_prefix(BEARER_PREFIX.as_bytes())
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(token: &Token) -> Vec<u8> {
        token.bearer().into_bytes()
    }

    #[test]
    fn a_code_is_redeemed_once_for_a_session_that_can_end() {
        let logins = Logins::default();
        let code = logins.one_time_code().expect("random");
        assert!(logins.redeem("not-the-code-at-all").is_none());
        let session = logins.redeem(code.expose()).expect("the code is good once");
        assert!(logins.redeem(code.expose()).is_none(), "never twice");
        assert!(logins.admits(Some(&header(&session))));
        assert!(
            !logins.admits(Some(code.expose().as_bytes())),
            "needs Bearer"
        );
        assert!(!logins.admits(Some(&header(&code))), "a code is no session");
        assert!(logins.end(Some(&header(&session))));
        assert!(!logins.admits(Some(&header(&session))), "logged out");
    }

    #[test]
    fn sessions_beyond_the_limit_push_out_the_oldest() {
        let logins = Logins::default();
        let sessions: Vec<Token> = (0..=MAX_SESSIONS)
            .map(|_| {
                let code = logins.one_time_code().expect("random");
                std::thread::sleep(Duration::from_millis(1));
                logins.redeem(code.expose()).expect("redeemed")
            })
            .collect();
        assert!(!logins.admits(Some(&header(&sessions[0]))));
        assert!(logins.admits(Some(&header(&sessions[MAX_SESSIONS]))));
    }
}
