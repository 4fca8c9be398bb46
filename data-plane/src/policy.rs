//! What each authenticated client may use: the `McpAccessPolicy`s of the
//! current snapshot. A client that no policy names (by its name, one of
//! its groups, or, for a JWT caller, claims its token has) may use
//! everything; for one that some do, `deny` always
//! wins, and once an `allow` names it, only what is allowed. What a client
//! may not use is absent from its lists and refused (403) when it asks for
//! it by name. Callers without a token are the client `anonymous` to
//! policies ([`ANONYMOUS`]).

use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::Counter, gauge::ConstGauge},
};

use crate::auth::Identity;

/// What a name or URI names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabel {
    kind: &'static str,
}

/// The things a policy speaks of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tool,
    Prompt,
    /// A resource's URI or a resource template's URI template.
    Resource,
}

/// Patterns per kind; `*` matches any run of characters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    pub tools: Vec<String>,
    pub prompts: Vec<String>,
    pub resources: Vec<String>,
}

/// One policy as the snapshot declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    pub groups: Vec<String>,
    pub clients: Vec<String>,
    /// Claims a JWT caller's token must all have.
    pub claims: Vec<(String, String)>,
    pub allow: Option<Rules>,
    pub deny: Rules,
}

/// The name policies know callers without a token by; no `McpClient` may
/// take it.
pub const ANONYMOUS: &str = "anonymous";

/// The current policies; cheap to clone.
#[derive(Clone, Default)]
pub struct Policies {
    current: Arc<ArcSwap<Vec<Arc<Policy>>>>,
    denied: [Counter; 3],
}

/// What one client may use, from the policies that name it.
#[derive(Debug)]
pub struct Access {
    client: Arc<str>,
    /// `None`: no policy allows anything in particular.
    allow: Option<Vec<Arc<Policy>>>,
    deny: Vec<Arc<Policy>>,
    denied: [Counter; 3],
}

// === impl Kind ===

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Prompt => "prompt",
            Kind::Resource => "resource",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

// === impl Rules ===

impl Rules {
    fn patterns(&self, kind: Kind) -> &[String] {
        match kind {
            Kind::Tool => &self.tools,
            Kind::Prompt => &self.prompts,
            Kind::Resource => &self.resources,
        }
    }

    fn matches(&self, kind: Kind, name: &str) -> bool {
        self.patterns(kind)
            .iter()
            .any(|pattern| glob_matches(pattern, name))
    }
}

// === impl Policies ===

impl Policies {
    pub fn replace(&self, policies: Vec<Policy>) {
        self.current
            .store(Arc::new(policies.into_iter().map(Arc::new).collect()));
    }

    /// What a caller without a token may use.
    pub fn anonymous_access(&self) -> Option<Access> {
        // Made once: open gateways ask on every request.
        static IDENTITY: std::sync::LazyLock<Identity> = std::sync::LazyLock::new(|| {
            let name: Arc<str> = ANONYMOUS.into();
            Identity {
                owner: name.clone(),
                name,
                groups: Arc::new([]),
                claims: Arc::new([]),
            }
        });
        self.access(&IDENTITY)
    }

    /// What `identity` may use; `None` when no policy names it (it may use
    /// everything).
    pub fn access(&self, identity: &Identity) -> Option<Access> {
        let current = self.current.load();
        let applies = |policy: &&Arc<Policy>| {
            policy.clients.iter().any(|c| **c == *identity.name)
                || policy.groups.iter().any(|g| identity.groups.contains(g))
                || (!policy.claims.is_empty()
                    && policy
                        .claims
                        .iter()
                        .all(|claim| identity.claims.contains(claim)))
        };
        let mut matched = current.iter().filter(applies).peekable();
        matched.peek()?;
        let matched: Vec<Arc<Policy>> = matched.cloned().collect();
        let allow: Vec<Arc<Policy>> = matched
            .iter()
            .filter(|p| p.allow.is_some())
            .cloned()
            .collect();
        Some(Access {
            client: identity.name.clone(),
            allow: (!allow.is_empty()).then_some(allow),
            deny: matched,
            denied: self.denied.clone(),
        })
    }
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Policies")
    }
}

impl Collector for Policies {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let count = i64::try_from(self.current.load().len()).unwrap_or(i64::MAX);
        ConstGauge::new(count).encode(encoder.encode_descriptor(
            "access_policies",
            "McpAccessPolicies of the current snapshot",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?)?;
        let mut denied = encoder.encode_descriptor(
            "access_denials",
            "Requests refused by an access policy, by what they named (tool, prompt, resource)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for kind in [Kind::Tool, Kind::Prompt, Kind::Resource] {
            let labels = KindLabel {
                kind: kind.as_str(),
            };
            self.denied[kind.index()].encode(denied.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

// === impl Access ===

impl Access {
    /// Whether the client may use `name` (listing never counts as a denial).
    pub fn permits(&self, kind: Kind, name: &str) -> bool {
        let denied = self.deny.iter().any(|p| p.deny.matches(kind, name));
        let allowed = self.allow.as_ref().is_none_or(|allow| {
            allow
                .iter()
                .any(|p| p.allow.as_ref().is_some_and(|a| a.matches(kind, name)))
        });
        allowed && !denied
    }

    /// Why a request naming `name` is refused, if it is; counted.
    pub fn refuse(&self, kind: Kind, name: &str) -> Option<String> {
        if self.permits(kind, name) {
            return None;
        }
        self.denied[kind.index()].inc();
        Some(format!(
            "{} `{name}` is not allowed for client `{}` (McpAccessPolicy)",
            kind.as_str(),
            self.client
        ))
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of
/// characters (none included) and everything else itself.
fn glob_matches(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.as_bytes(), name.as_bytes());
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was, and where in `name` it started matching.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                // Let the last `*` take one more character.
                Some((star_p, star_n)) => {
                    p = star_p + 1;
                    n = star_n + 1;
                    star = Some((star_p, star_n + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn identity(name: &str, groups: &[&str]) -> Identity {
        Identity {
            name: name.into(),
            owner: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            claims: Arc::new([]),
        }
    }

    fn rules(tools: &[&str]) -> Rules {
        Rules {
            tools: tools.iter().map(|t| (*t).to_owned()).collect(),
            ..Rules::default()
        }
    }

    #[test]
    fn stars_match_any_run_of_characters() {
        for (pattern, name, matches) in [
            ("utils.*", "utils.rm", true),
            ("utils.*", "utils.", true),
            ("utils.*", "util.rm", false),
            ("*.delete_*", "db.delete_row", true),
            ("*.delete_*", "db.deleted", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("a*b*c", "aXbYbZc", true),
            ("a*b*c", "aXbYbZ", false),
            ("file:///repo/*", "file:///repo/src/main.rs", true),
            ("*", "", true),
        ] {
            assert_eq!(glob_matches(pattern, name), matches, "{pattern} ~ {name}");
        }
    }

    #[test]
    fn deny_wins_and_an_allow_restricts_only_those_it_names() {
        let policies = Policies::default();
        policies.replace(vec![
            Policy {
                name: "no-admin".into(),
                groups: vec!["dev".into()],
                clients: vec![],
                claims: vec![],
                allow: None,
                deny: rules(&["utils.*"]),
            },
            Policy {
                name: "bob-reads".into(),
                groups: vec![],
                clients: vec!["bob".into()],
                claims: vec![],
                allow: Some(rules(&["fs.read*", "utils.echo"])),
                deny: Rules::default(),
            },
        ]);
        assert!(
            policies.access(&identity("carol", &["ops"])).is_none(),
            "named by no policy: everything"
        );
        let alice = policies
            .access(&identity("alice", &["dev"]))
            .expect("named");
        assert!(alice.permits(Kind::Tool, "fs.write"));
        assert!(!alice.permits(Kind::Tool, "utils.rm"));
        assert!(alice.permits(Kind::Prompt, "utils.rm"), "only tools denied");
        let bob = policies.access(&identity("bob", &[])).expect("named");
        assert!(bob.permits(Kind::Tool, "fs.read_file"));
        assert!(!bob.permits(Kind::Tool, "fs.write"));
        assert!(
            !bob.permits(Kind::Prompt, "anything"),
            "allow lists only tools"
        );
        // Bob in dev too: the deny wins over his allow.
        let both = policies.access(&identity("bob", &["dev"])).expect("named");
        assert!(!both.permits(Kind::Tool, "utils.echo"));
        assert!(both.permits(Kind::Tool, "fs.read_file"));
        let why = both.refuse(Kind::Tool, "utils.echo").expect("refused");
        assert!(
            why.contains("`utils.echo`") && why.contains("`bob`"),
            "{why}"
        );
        assert_eq!(policies.denied[Kind::Tool.index()].get(), 1);
        assert_eq!(both.refuse(Kind::Tool, "fs.read_file"), None);
    }

    #[test]
    fn callers_without_a_token_are_the_client_anonymous() {
        let policies = Policies::default();
        assert!(
            policies.anonymous_access().is_none(),
            "no policy: everything"
        );
        policies.replace(vec![Policy {
            name: "anonymous-reads".into(),
            groups: vec![],
            clients: vec![ANONYMOUS.into()],
            claims: vec![],
            allow: Some(rules(&["fs.read*"])),
            deny: Rules::default(),
        }]);
        let access = policies.anonymous_access().expect("named");
        assert!(access.permits(Kind::Tool, "fs.read_file"));
        assert!(!access.permits(Kind::Tool, "fs.write"));
    }

    #[test]
    fn claims_name_jwt_callers_whose_tokens_have_them_all() {
        let policies = Policies::default();
        policies.replace(vec![Policy {
            name: "payments-only".into(),
            groups: vec![],
            clients: vec![],
            claims: vec![
                ("team".into(), "payments".into()),
                ("tier".into(), "prod".into()),
            ],
            allow: Some(rules(&["pay.*"])),
            deny: Rules::default(),
        }]);
        let caller = |claims: &[(&str, &str)]| Identity {
            claims: claims
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..identity("svc", &[])
        };
        let both = caller(&[("team", "payments"), ("tier", "prod"), ("sub", "svc")]);
        let access = policies.access(&both).expect("named by its claims");
        assert!(access.permits(Kind::Tool, "pay.refund"));
        assert!(!access.permits(Kind::Tool, "fs.read"));
        assert!(
            policies.access(&caller(&[("team", "payments")])).is_none(),
            "one claim of two names nobody"
        );
    }

    proptest! {
        #[test]
        fn a_pattern_without_stars_matches_only_itself(name in "[a-z._/:]{0,12}", other in "[a-z._/:]{0,12}") {
            prop_assert!(glob_matches(&name, &name));
            prop_assert_eq!(glob_matches(&name, &other), name == other);
            prop_assert!(glob_matches("*", &other));
            let prefix = format!("{name}*");
            prop_assert_eq!(glob_matches(&prefix, &other), other.starts_with(&name));
        }
    }
}
