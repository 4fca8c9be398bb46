//! `switchboard-control connect`: the snippet each MCP client needs to
//! reach the gateway, rendered from `templates/clients/` (one file per
//! client, in that client's own format), not built in code. Each snippet
//! reaches the gateway the way its client does best: streamable HTTP
//! where the client takes a URL, the stdio bridge where it only starts
//! commands; and each names the caller (`?caller=` on the URL, or the
//! bridge's `--caller`), so logs and traces tell clients apart. With
//! `--auth` a snippet presents a token: URL clients read it from
//! `SWITCHBOARD_TOKEN` in their environment (written as each client
//! spells an environment reference), bridge clients from a token file.
//! `--write` merges the entry into the client's own file ([`merge`]).

mod merge;

use std::path::{Path, PathBuf};

pub use merge::{MergeError, merge, with_local};

/// One client this command knows.
pub struct Client {
    pub name: &'static str,
    /// The file it reads its MCP servers from, from the home directory
    /// (Linux; macOS where it differs).
    pub config: &'static str,
    pub config_macos: Option<&'static str>,
    /// `json` or `toml`.
    pub format: &'static str,
    /// Starts commands only: reached through the stdio bridge.
    bridge: bool,
    /// The object (or TOML table) holding the client's server entries.
    pub entries: &'static [&'static str],
    template: &'static str,
}

pub const CLIENTS: [Client; 9] = [
    Client {
        name: "claude-code",
        config: ".claude.json",
        config_macos: None,
        format: "json",
        bridge: false,
        entries: &["mcpServers"],
        template: include_str!("../../templates/clients/claude-code.json"),
    },
    Client {
        name: "claude-desktop",
        config: ".config/Claude/claude_desktop_config.json",
        config_macos: Some("Library/Application Support/Claude/claude_desktop_config.json"),
        format: "json",
        bridge: true,
        entries: &["mcpServers"],
        template: include_str!("../../templates/clients/claude-desktop.json"),
    },
    Client {
        name: "codex",
        config: ".codex/config.toml",
        config_macos: None,
        format: "toml",
        bridge: false,
        entries: &["mcp_servers"],
        template: include_str!("../../templates/clients/codex.toml"),
    },
    Client {
        name: "cursor",
        config: ".cursor/mcp.json",
        config_macos: None,
        format: "json",
        bridge: false,
        entries: &["mcpServers"],
        template: include_str!("../../templates/clients/cursor.json"),
    },
    Client {
        name: "vscode",
        config: ".config/Code/User/mcp.json",
        config_macos: Some("Library/Application Support/Code/User/mcp.json"),
        format: "json",
        bridge: false,
        entries: &["servers"],
        template: include_str!("../../templates/clients/vscode.json"),
    },
    Client {
        name: "opencode",
        config: ".config/opencode/opencode.json",
        config_macos: None,
        format: "json",
        bridge: false,
        entries: &["mcp"],
        template: include_str!("../../templates/clients/opencode.json"),
    },
    Client {
        name: "openclaw",
        config: ".openclaw/openclaw.json",
        config_macos: None,
        format: "json",
        bridge: false,
        entries: &["mcp", "servers"],
        template: include_str!("../../templates/clients/openclaw.json"),
    },
    Client {
        name: "gemini-cli",
        config: ".gemini/settings.json",
        config_macos: None,
        format: "json",
        bridge: false,
        entries: &["mcpServers"],
        template: include_str!("../../templates/clients/gemini-cli.json"),
    },
    Client {
        name: "windsurf",
        config: ".codeium/windsurf/mcp_config.json",
        config_macos: None,
        format: "json",
        bridge: false,
        entries: &["mcpServers"],
        template: include_str!("../../templates/clients/windsurf.json"),
    },
];

/// What a snippet is rendered with.
pub struct Snippet<'a> {
    /// The gateway's MCP endpoint.
    pub endpoint: &'a str,
    pub caller: &'a str,
    /// The entry's name in the client's config.
    pub name: &'a str,
    /// The gateway binary the bridge runs.
    pub bridge: &'a str,
    /// Present a token: URL clients from `SWITCHBOARD_TOKEN`, bridge
    /// clients from this file.
    pub auth: Option<&'a str>,
}

/// What `--write` did, or would do.
pub enum Written {
    /// The entry was there as wanted: nothing written.
    Unchanged,
    Wrote {
        backup: Option<PathBuf>,
    },
    /// `--dry-run`: the unified diff of the change.
    Diff(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Merge { path: String, source: MergeError },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// Merges `snippet`'s entries `names` into the client's config at `path`:
/// a timestamped backup of the file first, then the new text written
/// whole (a temporary file renamed into place); or, `dry_run`, the diff.
pub fn write_into(
    path: &Path,
    client: &Client,
    snippet: &str,
    names: &[&str],
    dry_run: bool,
) -> Result<Written, WriteError> {
    let shown = path.display().to_string();
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(WriteError::Read {
                path: shown,
                source,
            });
        }
    };
    let before = existing.as_deref().unwrap_or("");
    let mut merged = before.to_owned();
    for name in names {
        merged = merge(client, &merged, snippet, name).map_err(|source| WriteError::Merge {
            path: shown.clone(),
            source,
        })?;
    }
    if merged == before {
        return Ok(Written::Unchanged);
    }
    if dry_run {
        let diff = similar::TextDiff::from_lines(before, &merged)
            .unified_diff()
            .header(&shown, &shown)
            .to_string();
        return Ok(Written::Diff(diff));
    }
    let failed = |source| WriteError::Write {
        path: shown.clone(),
        source,
    };
    // A symlinked config (dotfile managers) is changed where it points.
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(failed)?;
    }
    // Copies get the file's own mode from their first byte: it may hold
    // secrets others must not read.
    let mode = std::fs::metadata(&target)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap_or(0o600);
    let backup = match &existing {
        Some(text) => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let backup = PathBuf::from(format!("{}.switchboard-backup-{stamp}", target.display()));
            create_new(&backup, text.as_bytes(), mode).map_err(failed)?;
            Some(backup)
        }
        None => None,
    };
    let temporary = PathBuf::from(format!(
        "{}.switchboard-tmp-{}",
        target.display(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&temporary);
    create_new(&temporary, merged.as_bytes(), mode).map_err(failed)?;
    std::fs::rename(&temporary, &target).map_err(failed)?;
    Ok(Written::Wrote { backup })
}

/// Writes a file that must not exist yet, with `mode` from the start.
fn create_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("unknown client `{0}`; `switchboard-control connect --list` names the ones known")]
    Unknown(String),
    #[error("{0} starts the bridge, which reads its token from a file: give --token-file")]
    NeedsTokenFile(&'static str),
    #[error("{0} holds a control character, which no config file takes")]
    ControlCharacter(&'static str),
}

pub fn client(name: &str) -> Result<&'static Client, ConnectError> {
    CLIENTS
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| ConnectError::Unknown(name.to_owned()))
}

impl Client {
    /// The snippet for this client.
    pub fn render(&self, snippet: &Snippet<'_>) -> Result<String, ConnectError> {
        let token_file = match (snippet.auth, self.bridge) {
            (Some(""), true) => return Err(ConnectError::NeedsTokenFile(self.name)),
            (Some(file), _) => file,
            (None, _) => "",
        };
        let separator = if snippet.endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!(
            "{}{separator}caller={}",
            snippet.endpoint,
            encode(snippet.caller)
        );
        let values = [
            ("name", escape(snippet.name)),
            ("name_key", toml_key(snippet.name)),
            ("url", escape(&url)),
            ("endpoint", escape(snippet.endpoint)),
            ("caller", escape(snippet.caller)),
            ("bridge", escape(snippet.bridge)),
            ("token_file", escape(token_file)),
        ];
        for (field, value) in [
            ("--name", snippet.name),
            ("--caller", snippet.caller),
            ("--url", snippet.endpoint),
            ("--token-file", token_file),
        ] {
            if value.chars().any(char::is_control) {
                return Err(ConnectError::ControlCharacter(field));
            }
        }
        let mut out = String::new();
        for line in self.template.lines() {
            let line = match line.strip_suffix("{{#auth}}") {
                Some(kept) if snippet.auth.is_some() => kept.trim_end(),
                Some(_) => continue,
                None => line,
            };
            // One pass: a value holding `{{…}}` stays as it is.
            let mut rest = line;
            while let Some(start) = rest.find("{{") {
                out.push_str(&rest[..start]);
                let after = &rest[start + 2..];
                match after.find("}}").and_then(|end| {
                    let value = values.iter().find(|(key, _)| *key == &after[..end])?;
                    Some((end, &value.1))
                }) {
                    Some((end, value)) => {
                        out.push_str(value);
                        rest = &after[end + 2..];
                    }
                    None => {
                        out.push_str("{{");
                        rest = after;
                    }
                }
            }
            out.push_str(rest);
            out.push('\n');
        }
        Ok(out)
    }

    /// Where this client keeps its config on this machine.
    pub fn config_path(&self, home: &std::path::Path) -> PathBuf {
        match self.config_macos.filter(|_| cfg!(target_os = "macos")) {
            Some(path) => home.join(path),
            None => home.join(self.config),
        }
    }
}

/// A value inside a JSON or TOML basic string: both escape `\` and `"`
/// alike, and no value here holds control characters.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A TOML table key: bare when it can be, quoted otherwise.
fn toml_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    match bare {
        true => name.to_owned(),
        false => format!("\"{}\"", escape(name)),
    }
}

/// A caller name as a URL query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snippet(auth: Option<&'static str>) -> Snippet<'static> {
        Snippet {
            endpoint: "http://127.0.0.1:8787/mcp",
            caller: "codex-alice",
            name: "switchboard",
            bridge: "/usr/local/bin/switchboard-gateway",
            auth,
        }
    }

    #[test]
    fn every_client_names_the_caller_and_auth_lines_come_only_with_auth() {
        for client in &CLIENTS {
            let open = client.render(&snippet(None)).expect("renders");
            assert!(open.contains("codex-alice"), "{}: {open}", client.name);
            assert!(!open.contains("{{"), "{}: {open}", client.name);
            assert!(
                !open.contains("SWITCHBOARD_TOKEN"),
                "{}: {open}",
                client.name
            );
            let closed = client
                .render(&snippet(Some("/home/alice/.switchboard-token")))
                .expect("renders");
            assert!(
                closed.contains("SWITCHBOARD_TOKEN"),
                "{}: {closed}",
                client.name
            );
        }
        let desktop = client("claude-desktop").expect("known");
        assert!(matches!(
            desktop.render(&snippet(Some(""))),
            Err(ConnectError::NeedsTokenFile(_))
        ));
        assert!(client("notepad").is_err());
    }

    #[test]
    fn names_with_dots_or_quotes_stay_one_key_and_values_stay_values() {
        let odd = Snippet {
            name: "team.tools \"x\"",
            caller: "{{url}}",
            ..snippet(None)
        };
        let codex = client("codex")
            .expect("known")
            .render(&odd)
            .expect("renders");
        assert!(
            codex.starts_with("[mcp_servers.\"team.tools \\\"x\\\"\"]"),
            "{codex}"
        );
        let parsed: toml_edit::DocumentMut = codex.parse().expect("TOML");
        assert!(
            parsed["mcp_servers"]["team.tools \"x\""]["url"].is_str(),
            "{codex}"
        );
        assert!(
            codex.contains("caller=%7B%7Burl%7D%7D"),
            "not substituted twice: {codex}"
        );
        let cursor = client("cursor")
            .expect("known")
            .render(&odd)
            .expect("renders");
        let parsed: serde_json::Value = serde_json::from_str(&cursor).expect("JSON");
        assert!(
            parsed["mcpServers"]["team.tools \"x\""].is_object(),
            "{cursor}"
        );
        let newline = Snippet {
            caller: "a\nb",
            ..snippet(None)
        };
        assert!(matches!(
            client("codex").expect("known").render(&newline),
            Err(ConnectError::ControlCharacter("--caller"))
        ));
    }

    #[test]
    fn values_are_escaped_for_the_format() {
        let odd = Snippet {
            caller: "a \"b\" & c",
            ..snippet(None)
        };
        let rendered = client("cursor")
            .expect("known")
            .render(&odd)
            .expect("renders");
        assert!(
            rendered.contains("caller=a%20%22b%22%20%26%20c"),
            "{rendered}"
        );
        assert_eq!(encode("x y"), "x%20y");
        assert_eq!(escape(r#"C:\ "q""#), r#"C:\\ \"q\""#);
    }
}
