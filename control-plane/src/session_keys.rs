//! The key set gateways seal session ids with (`data-plane`'s
//! `mcp/seal.rs`), so that any replica serves any session: one set for
//! every replica of the install, sent with each snapshot (only ever to
//! authenticated replicas, never logged). Newest first: the first key
//! seals new sessions, every key opens. Where it comes from:
//! - a file (`--session-keys-file`): one key per line, 64 hex digits
//!   (`openssl rand -hex 32`), `#` comments; read again every few seconds,
//!   so a rotation (a new first line, the old kept for as long as its
//!   sessions should last) needs no restart;
//! - in a cluster, the tokens Secret's `session-keys` entry, in the same
//!   form, made with one key on the first start and read again the same
//!   way (every control-plane pod must send the same set);
//! - otherwise one key made at start, kept in memory: sessions then last
//!   as long as this control plane.

use std::{path::PathBuf, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The set, newest first.
pub type KeySet = Arc<Vec<Vec<u8>>>;

/// Bytes of one key (AES-256-GCM).
const KEY_LEN: usize = 32;
/// How often a file or Secret is read again.
const REREAD_EVERY: Duration = Duration::from_secs(5);
/// The tokens Secret's entry.
pub const SECRET_KEY: &str = "session-keys";

/// Where the set comes from.
pub enum KeySource {
    File(PathBuf),
    Secret {
        client: Client,
        namespace: String,
        name: String,
    },
    Generated,
}

/// A fresh set of one key, in the text form.
pub fn fresh_text() -> Result<String, proto::auth::TokenError> {
    // A replica token is 32 random bytes in hex: the same form as a key.
    Ok(format!("{}\n", proto::auth::Token::generate()?.expose()))
}

/// The keys in `text`, newest first; a line that is no key is an error
/// naming it (by number only: it may be a key with a typo).
pub fn parse(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut keys = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = crate::traces::unhex(line)
            .filter(|key| key.len() == KEY_LEN)
            .ok_or_else(|| format!("line {}: not {} hex digits", number + 1, KEY_LEN * 2))?;
        keys.push(key);
    }
    if keys.is_empty() {
        return Err("no key".to_owned());
    }
    Ok(keys)
}

/// The set, kept current from `source` until `cancel`. Fails only when
/// there is no first set (an unreadable file, a bad Secret entry): a
/// later bad read keeps the last good set.
pub async fn watch(
    source: KeySource,
    cancel: CancellationToken,
) -> anyhow::Result<watch::Receiver<KeySet>> {
    let first = match &source {
        KeySource::Generated => {
            let keys = parse(&fresh_text()?).map_err(anyhow::Error::msg)?;
            info!(
                "session ids are sealed with a key made at start: sessions last as long as this control plane"
            );
            let (sender, keys) = watch::channel(Arc::new(keys));
            // Never changes, but stays open: a closed channel reads as gone.
            tokio::spawn(async move {
                cancel.cancelled().await;
                drop(sender);
            });
            return Ok(keys);
        }
        source => read(source).await?,
    };
    info!(keys = first.len(), "session key set loaded");
    let (sender, keys) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(REREAD_EVERY);
        every.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            match read(&source).await {
                Ok(read) => {
                    sender.send_if_modified(|current| {
                        let changed = **current != read;
                        if changed {
                            info!(keys = read.len(), "session key set changed");
                            *current = Arc::new(read);
                        }
                        changed
                    });
                }
                Err(error) => {
                    warn!(%error, "cannot read the session key set: keeping the last one")
                }
            }
        }
    });
    Ok(keys)
}

async fn read(source: &KeySource) -> anyhow::Result<Vec<Vec<u8>>> {
    let (text, whence) = match source {
        KeySource::File(path) => (
            tokio::fs::read_to_string(path).await?,
            path.display().to_string(),
        ),
        KeySource::Secret {
            client,
            namespace,
            name,
        } => {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
            let secret = secrets.get(name).await?;
            let entry = secret
                .data
                .and_then(|mut data| data.remove(SECRET_KEY))
                .ok_or_else(|| {
                    anyhow::anyhow!("Secret `{namespace}/{name}` has no `{SECRET_KEY}`")
                })?;
            (
                String::from_utf8(entry.0)?,
                format!("Secret `{namespace}/{name}` key `{SECRET_KEY}`"),
            )
        }
        KeySource::Generated => return Err(anyhow::anyhow!("a generated set is never read")),
    };
    parse(&text).map_err(|reason| anyhow::anyhow!("{whence}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_lines_of_64_hex_digits_newest_first() {
        let text = format!("# rotated\n{}\n\n{}\n", "ab".repeat(32), "01".repeat(32));
        let keys = parse(&text).expect("two keys");
        assert_eq!(keys, vec![vec![0xab; 32], vec![0x01; 32]]);
        assert_eq!(
            parse(&fresh_text().expect("random")).map(|k| k.len()),
            Ok(1)
        );
        for (bad, why) in [
            ("", "no key"),
            ("# only a comment\n", "no key"),
            (&"ab".repeat(16), "line 1"),
            (
                &format!("{}\nzz{}", "ab".repeat(32), "ab".repeat(31)),
                "line 2",
            ),
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(error.contains(why), "{bad}: {error}");
        }
    }
}
