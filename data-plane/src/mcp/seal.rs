//! Session ids any replica can open. A streamable-HTTP session's
//! `Mcp-Session-Id` is its row sealed with AES-256-GCM under the session
//! key set every replica of one control plane shares (pushed on the config
//! stream, [`SessionKeys::set`]): the session's UUID, when it was issued,
//! its caller and its handshake. A replica that never saw the session
//! opens the id and restores it as a parked one (`session.rs`), so no
//! store is shared. The newest key seals; every key of the set opens, so
//! a rotation keeps old sessions for as long as their key stays in the set.
//!
//! Wire form: `base64url(version ‖ key id ‖ nonce ‖ ciphertext ‖ tag)`, the
//! first two authenticated as associated data. The plaintext starts with
//! the UUID and the issue time, fixed-width, so a replica that holds the
//! row reads no JSON on the request path.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    digest::{SHA256, digest},
    rand::{SecureRandom, SystemRandom},
};
use rmcp::model::InitializeRequestParams;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The wire form's version byte.
const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const HEADER_LEN: usize = 1 + KEY_ID_LEN;
/// Bytes of a session key.
pub const KEY_LEN: usize = 32;
/// A handshake bigger than this is left out of the id (it would make
/// every request's headers that much bigger): such a session lives only
/// on the replica that opened it.
const MAX_HANDSHAKE: usize = 4096;
/// Longer than any id sealed here (the handshake, its JSON and base64).
const MAX_ID: usize = 4 * (MAX_HANDSHAKE + 1024) / 3;

/// Why an id opens no session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not a session id")]
    Malformed,
    #[error("sealed with a key not in the set")]
    UnknownKey,
    #[error("altered or forged")]
    Tampered,
    #[error("older than the session lifetime")]
    Expired,
}

impl Refused {
    /// A label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Malformed => "malformed",
            Refused::UnknownKey => "unknown_key",
            Refused::Tampered => "tampered",
            Refused::Expired => "expired",
        }
    }
}

/// What a session id carries.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims {
    pub id: Uuid,
    /// Filled by [`SessionKeys::open`] only on request (`with_rest`).
    pub rest: Option<Rest>,
}

/// The variable part of [`Claims`]: who opened the session and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rest {
    /// The authenticated client that opened it.
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// `None`: too big to carry.
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub handshake: Option<InitializeRequestParams>,
}

struct Key {
    id: [u8; KEY_ID_LEN],
    aead: LessSafeKey,
}

/// The key set, newest first; cheap to clone.
#[derive(Clone)]
pub struct SessionKeys {
    keys: Arc<ArcSwap<Vec<Key>>>,
    /// How long after it was issued an id still opens.
    max_age: Duration,
    random: SystemRandom,
}

impl SessionKeys {
    /// A set of one random key: sessions stay on this replica until the
    /// control plane sends the set its replicas share. Random 96-bit
    /// nonces keep a key safe for far more sessions (2³²) than one key
    /// seals between rotations.
    pub fn local(max_age: Duration) -> Self {
        let random = SystemRandom::new();
        let mut key = [0u8; KEY_LEN];
        // Without randomness nothing can be sealed safely: ids of an
        // all-zero key would be forgeable, so the set stays empty.
        let keys = match random.fill(&mut key) {
            Ok(()) => key_set(&[key.to_vec()]),
            Err(_) => Vec::new(),
        };
        Self {
            keys: Arc::new(ArcSwap::from_pointee(keys)),
            max_age,
            random,
        }
    }

    /// How long after it was issued an id still opens.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Replaces the set (newest first); keys of the wrong length are
    /// skipped. An empty set keeps the current one.
    pub fn set(&self, keys: &[Vec<u8>]) -> usize {
        let keys = key_set(keys);
        let count = keys.len();
        if count > 0 {
            self.keys.store(Arc::new(keys));
        }
        count
    }

    /// The id of a new session.
    pub fn seal(&self, id: Uuid, rest: &Rest) -> Option<String> {
        self.seal_at(id, rest, unix_now())
    }

    fn seal_at(&self, id: Uuid, rest: &Rest, issued: u64) -> Option<String> {
        let keys = self.keys.load();
        let key = keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut rest = rest.clone();
        if serde_json::to_vec(&rest.handshake).map_or(true, |h| h.len() > MAX_HANDSHAKE) {
            rest.handshake = None;
        }
        let mut sealed = Vec::with_capacity(HEADER_LEN + NONCE_LEN + 24 + 512);
        sealed.push(VERSION);
        sealed.extend_from_slice(&key.id);
        sealed.extend_from_slice(&nonce);
        let header = [VERSION, key.id[0], key.id[1], key.id[2], key.id[3]];
        let mut plain = Vec::with_capacity(24 + 512);
        plain.extend_from_slice(id.as_bytes());
        plain.extend_from_slice(&issued.to_be_bytes());
        serde_json::to_writer(&mut plain, &rest).ok()?;
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(header),
                &mut plain,
            )
            .ok()?;
        sealed.extend_from_slice(&plain);
        Some(URL_SAFE_NO_PAD.encode(sealed))
    }

    /// What `token` carries, if a key of the set sealed it and it is not
    /// past its lifetime; the variable part only `with_rest` (a replica
    /// that holds the session needs just the UUID).
    pub fn open(&self, token: &str, with_rest: bool) -> Result<Claims, Refused> {
        // Not worth decoding: no id of ours is that long.
        if token.len() > MAX_ID {
            return Err(Refused::Malformed);
        }
        let mut sealed = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| Refused::Malformed)?;
        if sealed.len() < HEADER_LEN + NONCE_LEN + 16 + 24 || sealed[0] != VERSION {
            return Err(Refused::Malformed);
        }
        let header: [u8; HEADER_LEN] = sealed[..HEADER_LEN]
            .try_into()
            .map_err(|_| Refused::Malformed)?;
        let nonce: [u8; NONCE_LEN] = sealed[HEADER_LEN..HEADER_LEN + NONCE_LEN]
            .try_into()
            .map_err(|_| Refused::Malformed)?;
        let keys = self.keys.load();
        let key = keys
            .iter()
            .find(|key| key.id == header[1..])
            .ok_or(Refused::UnknownKey)?;
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(header),
                &mut sealed[HEADER_LEN + NONCE_LEN..],
            )
            .map_err(|_| Refused::Tampered)?;
        let (fixed, rest) = plain.split_at(24);
        let id = Uuid::from_slice(&fixed[..16]).map_err(|_| Refused::Tampered)?;
        let issued = u64::from_be_bytes(fixed[16..24].try_into().map_err(|_| Refused::Tampered)?);
        if unix_now().saturating_sub(issued) > self.max_age.as_secs() {
            return Err(Refused::Expired);
        }
        let rest = match with_rest {
            true => Some(serde_json::from_slice(rest).map_err(|_| Refused::Tampered)?),
            false => None,
        };
        Ok(Claims { id, rest })
    }
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        write!(f, "SessionKeys({} keys)", self.keys.load().len())
    }
}

fn key_set(keys: &[Vec<u8>]) -> Vec<Key> {
    keys.iter()
        .filter(|key| key.len() == KEY_LEN)
        .filter_map(|key| {
            let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).ok()?);
            let mut id = [0u8; KEY_ID_LEN];
            id.copy_from_slice(&digest(&SHA256, key).as_ref()[..KEY_ID_LEN]);
            Some(Key { id, aead })
        })
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests;
