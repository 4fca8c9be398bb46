//! Input-required rounds (SEP-2322): how a server of an older revision
//! that asks its client something mid-call (sampling, elicitation, roots)
//! reaches a 2026-07-28 client, which cannot be asked anything. The
//! server's question ends the client's request with an `input_required`
//! result naming it, while the call waits where it is, parked here under
//! a random `requestState`; the client's retry carries its answers in
//! `inputResponses`, which go to the waiting question, and the call goes
//! on to its result or to the next round. A parked call lives on the
//! replica that parked it, for as long as its server waits for an answer
//! (`timeouts.maxCall`), and only its own client may resume it; its
//! `requestState` names that replica, so a retry landing on another one
//! is handed to it (`peers.rs`).

// Sampling and roots: deprecated by SEP-2577, still what older servers ask.
#![allow(deprecated)]

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::body::Bytes;
use parking_lot::Mutex;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::Counter, gauge::ConstGauge},
};
use rmcp::model::{
    ClientCapabilities, ClientResult, CreateMessageResult, ElicitResult, ErrorData, InputResponses,
    ListRootsResult, RequestId,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tracing::debug;

use super::{methods::encode, session::Holding, stateless};
use crate::{clients::ToStream, downstream::Question, telemetry::metrics::encode_counters};

/// More questions asked at once are gathered this long into one round.
const GATHER: Duration = Duration::from_millis(20);
/// What starts the `requestState` of a round parked here; any other is a
/// 2026-07-28 server's own, for the server to read.
pub const STATE_PREFIX: &str = "sb-round-";
/// Calls parked at most; beyond, the oldest are given up.
const MAX_PARKED: usize = 1024;
/// A parked call nobody resumed is given up after this long.
const PARKED_FOR: Duration = Duration::from_secs(10 * 60);

/// Calls waiting for their clients' answers, by `requestState`; cheap
/// to clone.
#[derive(Clone)]
pub struct Rounds {
    /// This replica, named in the states of its rounds.
    replica: Arc<str>,
    parked: Arc<Mutex<HashMap<String, Parked>>>,
    /// Rounds begun: a call parked on its servers' questions.
    asked: Counter,
    /// Retries that answered a parked call.
    resumed: Counter,
    /// Retries naming a state nobody issued, another client's, or one
    /// given up.
    unknown: Counter,
}

/// A call between rounds.
pub struct Call {
    /// The call's answer, once it comes.
    pub answer: JoinHandle<Option<Bytes>>,
    /// What its servers ask the client (`None`: nothing can be asked).
    pub questions: Option<mpsc::Receiver<ToStream>>,
    /// Keeps the call's session open while it waits across requests.
    pub _session: Holding,
    /// Whose call it is: only they may resume it.
    pub owner: Option<Arc<str>>,
    /// What the client said it can be asked.
    pub capabilities: ClientCapabilities,
    /// `resources/read`'s URI, for a not-found answer.
    pub uri: Option<String>,
}

/// A question waiting for its answer: what it asked, and where the
/// answer goes.
type Waiting = (Question, oneshot::Sender<Result<ClientResult, ErrorData>>);

struct Parked {
    call: Call,
    /// The questions of the last round, by key, and where each answer goes.
    waiting: HashMap<String, Waiting>,
    since: Instant,
}

// === impl Rounds ===

impl Rounds {
    pub fn new(replica: &str) -> Self {
        Self {
            replica: replica.into(),
            parked: Arc::default(),
            asked: Counter::default(),
            resumed: Counter::default(),
            unknown: Counter::default(),
        }
    }

    /// Runs `call` until its answer, or until its servers ask something:
    /// what the client of request `id` gets this round.
    pub async fn next(&self, id: &RequestId, mut call: Call) -> Option<Bytes> {
        let mut waiting = HashMap::new();
        let mut requests = Map::new();
        while waiting.is_empty() {
            let mut asked = Vec::new();
            let question = match call.questions.as_mut() {
                Some(questions) => tokio::select! {
                    biased;
                    done = &mut call.answer => return finish(done, id, call.uri.as_deref()),
                    question = questions.recv() => question,
                },
                None => None,
            };
            let Some(question) = question else {
                // Nothing more can be asked: the answer is all there is.
                let done = (&mut call.answer).await;
                return finish(done, id, call.uri.as_deref());
            };
            // Questions asked together go out together; a withdrawn one
            // is no question.
            asked.push(question);
            let gathering = tokio::time::sleep(GATHER);
            tokio::pin!(gathering);
            while let Some(questions) = call.questions.as_mut() {
                tokio::select! {
                    () = &mut gathering => break,
                    question = questions.recv() => match question {
                        Some(question) => asked.push(question),
                        None => break,
                    },
                }
            }
            for question in asked {
                // A withdrawn question is no question.
                let ToStream::Request {
                    id: key,
                    request,
                    answer_to,
                } = question
                else {
                    continue;
                };
                let question = Question::of(&request);
                // Nothing on a pipe says a question is this call's: one the
                // client cannot answer is the server's to get over, and
                // the call goes on.
                if !question.declared_in(&call.capabilities) {
                    let _ = answer_to.send(Err(ErrorData::invalid_request(
                        format!("the client did not declare the capability {question} needs"),
                        None,
                    )));
                    continue;
                }
                let key = key.to_string();
                requests.insert(
                    key.clone(),
                    serde_json::to_value(&*request).unwrap_or_default(),
                );
                waiting.insert(key, (question, answer_to));
            }
        }
        let state = match proto::auth::Token::generate() {
            Ok(token) => format!("{STATE_PREFIX}{}@{}", token.expose(), self.replica),
            Err(_) => {
                return Some(encode::<()>(
                    id,
                    Err(ErrorData::internal_error(
                        "no randomness for a requestState",
                        None,
                    )),
                ));
            }
        };
        debug!(
            questions = waiting.len(),
            "a server asked a 2026-07-28 client: input required"
        );
        self.asked.inc();
        self.park(
            state.clone(),
            Parked {
                call,
                waiting,
                since: Instant::now(),
            },
        );
        let result = json!({ "resultType": "input_required", "inputRequests": requests, "requestState": state });
        Some(encode(id, Ok(result)))
    }

    /// A retry carrying `requestState` and `inputResponses`: the answers
    /// go to the waiting questions and the call goes on.
    pub async fn resume(
        &self,
        id: &RequestId,
        retry: &Retry,
        owner: Option<&Arc<str>>,
    ) -> Option<Bytes> {
        let parked = {
            let mut parked = self.parked.lock();
            match parked.get(&retry.request_state) {
                Some(found) if found.call.owner.as_ref() == owner => {
                    parked.remove(&retry.request_state)
                }
                _ => None,
            }
        };
        let Some(parked) = parked else {
            self.unknown.inc();
            return Some(encode::<()>(
                id,
                Err(ErrorData::invalid_params(
                    "unknown or expired requestState: send the request again without it",
                    None,
                )),
            ));
        };
        if let Some(missing) = parked
            .waiting
            .keys()
            .find(|key| !retry.input_responses.contains_key(*key))
        {
            let missing = missing.clone();
            // The round stays open for a retry that answers everything.
            self.park(retry.request_state.clone(), parked);
            return Some(encode::<()>(
                id,
                Err(ErrorData::invalid_params(
                    format!("inputResponses lacks `{missing}`"),
                    None,
                )),
            ));
        }
        self.resumed.inc();
        for (key, (question, answer_to)) in parked.waiting {
            let response = retry.input_responses.get(&key).cloned().unwrap_or_default();
            let _ = answer_to.send(client_result(question, response));
        }
        Box::pin(self.next(id, parked.call)).await
    }

    fn park(&self, state: String, call: Parked) {
        let mut parked = self.parked.lock();
        parked.retain(|_, p| p.since.elapsed() < PARKED_FOR && !p.call.answer.is_finished());
        if parked.len() >= MAX_PARKED
            && let Some(oldest) = parked
                .iter()
                .min_by_key(|(_, p)| p.since)
                .map(|(k, _)| k.clone())
        {
            parked.remove(&oldest);
        }
        parked.insert(state, call);
    }
}

/// The replica holding the call a state of this gateway's resumes.
pub fn holder(state: &str) -> Option<&str> {
    state
        .strip_prefix(STATE_PREFIX)?
        .rsplit_once('@')
        .map(|(_, replica)| replica)
}

/// The call's answer, written for request `id`; `None` for a call that was
/// cancelled (nobody is there for an answer).
fn finish(
    done: Result<Option<Bytes>, tokio::task::JoinError>,
    id: &RequestId,
    uri: Option<&str>,
) -> Option<Bytes> {
    match done {
        Ok(body) => body.map(|body| stateless::shape(body, id, uri)),
        Err(_) => Some(encode::<()>(
            id,
            Err(ErrorData::internal_error(
                "the call failed in the gateway",
                None,
            )),
        )),
    }
}

/// The `requestState` and `inputResponses` of a retry.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    pub request_state: String,
    #[serde(default)]
    pub input_responses: InputResponses,
}

impl Retry {
    /// A retry's, from the typed params rmcp read (`tools/call` through
    /// rmcp, `prompts/get`, `resources/read`).
    pub fn of(state: &Option<String>, responses: &Option<InputResponses>) -> Option<Self> {
        Some(Self {
            request_state: state.clone()?,
            input_responses: responses.clone().unwrap_or_default(),
        })
    }
}

/// The client's answer to a question, as the server's request expects it.
fn client_result(question: Question, response: Value) -> Result<ClientResult, ErrorData> {
    let unreadable = |e: serde_json::Error| {
        ErrorData::invalid_params(format!("the client's answer to {question}: {e}"), None)
    };
    match question {
        Question::Sampling => serde_json::from_value::<CreateMessageResult>(response)
            .map(|r| ClientResult::CreateMessageResult(Box::new(r)))
            .map_err(unreadable),
        Question::Elicitation => serde_json::from_value::<ElicitResult>(response)
            .map(ClientResult::ElicitResult)
            .map_err(unreadable),
        Question::Roots | Question::Any => serde_json::from_value::<ListRootsResult>(response)
            .map(ClientResult::ListRootsResult)
            .map_err(unreadable),
    }
}

impl Collector for Rounds {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        encode_counters(
            &mut encoder,
            &[
                (
                    "input_required_rounds",
                    "Calls of 2026-07-28 clients parked on a server's questions (input-required rounds begun)",
                    &self.asked,
                ),
                (
                    "input_required_resumed",
                    "Retries with the answers that resumed a parked call",
                    &self.resumed,
                ),
                (
                    "input_required_unknown_state",
                    "Retries naming a requestState that is unknown, another client's, or given up",
                    &self.unknown,
                ),
            ],
        )?;
        let waiting = self
            .parked
            .lock()
            .values()
            .filter(|p| !p.call.answer.is_finished())
            .count();
        let parked = ConstGauge::new(i64::try_from(waiting).unwrap_or(i64::MAX));
        parked.encode(encoder.encode_descriptor(
            "input_required_parked",
            "Calls waiting for their clients' answers",
            None,
            parked.metric_type(),
        )?)
    }
}

impl std::fmt::Debug for Rounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rounds")
    }
}
