//! Keeps credentials out of what the gateway reports. Errors from HTTP
//! servers and their clients quote URLs, and a URL may carry a password
//! (`https://user:secret@host`) or a token in its query string; before an
//! error is stored for `/healthz`, sent to the control plane (status,
//! Events) or given to a client, both are cut out of every URL in it, and
//! every log line is written through [`Lines`], since libraries (rmcp,
//! reqwest) log the URLs they fail on themselves. `Lines` also replaces
//! every UUID in a line, the shape of a session id (a session's bearer
//! credential), by the short hash spans carry (`observe::session_tag`).

use std::{borrow::Cow, io};

use crate::observe::session_tag;

/// `text` with each URL's user info replaced by `***` and its query by
/// `?redacted`.
pub fn urls(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        // The scheme runs back to the first character no scheme holds,
        // which may be several bytes long.
        let scheme_start = rest[..at]
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = rest[at..]
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`' | ')' | ']')
            })
            .map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..scheme_start]);
        out.push_str(&redact_one(&rest[scheme_start..end], at - scheme_start));
        rest = &rest[end..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// A log writer that redacts each line it is given (the formatter hands
/// it one whole event per write).
pub struct Lines<W>(pub W);

impl<W: io::Write> io::Write for Lines<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Ok(text) = std::str::from_utf8(buf) else {
            return self.0.write(buf);
        };
        // Borrowed all the way when there is nothing to cut: no copy.
        let without_urls = urls(text);
        self.0.write_all(session_ids(&without_urls).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// `text` with every UUID (`8-4-4-4-12` hex digits) replaced by its
/// session tag.
pub fn session_ids(text: &str) -> Cow<'_, str> {
    const LEN: usize = 36;
    let bytes = text.as_bytes();
    let is_uuid = |window: &[u8]| {
        window.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
    };
    let mut out = String::new();
    let (mut copied, mut at) = (0, 0);
    while at + LEN <= bytes.len() {
        if is_uuid(&bytes[at..at + LEN]) {
            // ASCII throughout, so both ends are char boundaries.
            out.push_str(&text[copied..at]);
            out.push_str(&session_tag(&text[at..at + LEN]));
            at += LEN;
            copied = at;
        } else {
            at += 1;
        }
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// One URL, its `://` at `separator`.
fn redact_one(url: &str, separator: usize) -> String {
    let authority_start = separator + 3;
    let authority_end = url[authority_start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| authority_start + i);
    let authority = &url[authority_start..authority_end];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..authority_start]);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str("***");
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &url[authority_end..];
    match tail.find('?') {
        Some(query) => {
            out.push_str(&tail[..query]);
            out.push_str("?redacted");
            if let Some(fragment) = tail[query..].find('#') {
                out.push_str(&tail[query + fragment..]);
            }
        }
        None => out.push_str(tail),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_queries_are_cut_from_every_url() {
        for (text, redacted) in [
            ("no url here", "no url here"),
            (
                "error sending request for url (https://alice:s3cret@mcp.example.com/mcp?token=abc&x=1)",
                "error sending request for url (https://***@mcp.example.com/mcp?redacted)",
            ),
            (
                "GET http://h:8080/sse?key=k#frag failed; retry http://u@other/ ok",
                "GET http://h:8080/sse?redacted#frag failed; retry http://***@other/ ok",
            ),
            (
                "\"http://plain.example/path\"",
                "\"http://plain.example/path\"",
            ),
            ("ws://a:b@c?d", "ws://***@c?redacted"),
            // Found by the property below: a multi-byte character before the scheme.
            ("¹𝕆://u:p@h/?q 𝕆", "¹𝕆://***@h/?redacted 𝕆"),
        ] {
            assert_eq!(urls(text), redacted, "{text}");
        }
    }

    #[test]
    fn log_lines_are_written_redacted() {
        use std::io::Write;
        let mut lines = Lines(Vec::new());
        lines
            .write_all(b"level=error url=\"http://h/p?token=t\"\n")
            .expect("write");
        lines.write_all(b"plain\n").expect("write");
        let id = "21abf3bf-0629-4970-90ed-b6257b8f340d";
        lines
            .write_all(format!("session_id=\"\\\"{id}\\\"\"\n").as_bytes())
            .expect("write");
        assert_eq!(
            String::from_utf8(lines.0).expect("UTF-8"),
            format!(
                "level=error url=\"http://h/p?redacted\"\nplain\nsession_id=\"\\\"{}\\\"\"\n",
                session_tag(id)
            )
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::urls;

    proptest! {
        /// Whatever surrounds it, a URL's password and query never survive.
        #[test]
        fn no_password_or_query_survives(
            before in "[ -~]{0,20}",
            user in "[a-z]{1,8}",
            password in "[A-Za-z0-9]{12,20}",
            host in "[a-z]{1,10}(\\.[a-z]{2,5})?(:[0-9]{1,5})?",
            path in "(/[a-z0-9]{0,8}){0,3}",
            query in "[A-Za-z0-9]{12,20}",
            after in "[ -~]{0,20}",
        ) {
            let text = format!("{before} http://{user}:{password}@{host}{path}?t={query} {after}");
            let redacted = urls(&text);
            prop_assert!(!redacted.contains(&password), "{redacted}");
            prop_assert!(!redacted.contains(&query), "{redacted}");
        }

        #[test]
        fn any_text_is_redacted_without_panicking(text in "\\PC{0,80}") {
            let _ = urls(&text);
        }
    }
}

#[cfg(test)]
mod session_id_properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A UUID anywhere in a line comes out as its tag; any other text
        /// comes out unchanged and nothing panics.
        #[test]
        fn uuids_become_tags(before in "\\PC{0,20}", uuid in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", after in "\\PC{0,20}") {
            let text = format!("{before} {uuid} {after}");
            let redacted = session_ids(&text);
            prop_assert!(!redacted.contains(&uuid), "{redacted}");
            prop_assert!(redacted.contains(&session_tag(&uuid)), "{redacted}");
        }
    }
}
