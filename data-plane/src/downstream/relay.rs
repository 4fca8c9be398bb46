//! What flows from a server back to clients over one connection: progress
//! (with the client's own token restored, in the server's order, all of it
//! ahead of the response it belongs to), log
//! messages, `resources/updated`, list changes, and the server's own
//! requests (sampling, elicitation, roots). A server request goes to the
//! client session whose request is in flight on the connection, riding
//! that request's response stream; when no single session can be named
//! (a shared connection busy with several sessions, or idle), the server
//! gets an error saying so rather than another client's answer. The first
//! question a server asks on a shared connection is recorded
//! ([`AskedClients`]): from then on its connections carry one session's
//! calls at a time, so there is always exactly one session to ask.

// Sampling, roots and logging are deprecated by SEP-2577 but clients on
// the protocol versions this gateway serves still use them.
#![allow(deprecated)]

use std::{
    borrow::Cow,
    collections::HashMap,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use rmcp::{
    ClientHandler, ErrorData,
    model::{
        ClientCapabilities, ClientConfig, ClientResult, CreateMessageRequest,
        CreateMessageRequestParams, CreateMessageResult, ElicitRequest, ElicitRequestParams,
        ElicitResult, ElicitationCapability, Implementation, InitializeRequestParams,
        ListRootsRequest, ListRootsResult, LoggingMessageNotification,
        LoggingMessageNotificationParam, ProgressNotification, ProgressNotificationParam,
        ProgressToken, ProtocolVersion, RequestId, ResourceUpdatedNotification,
        ResourceUpdatedNotificationParam, RootsCapabilities, ServerJsonRpcMessage,
        ServerNotification, ServerRequest,
    },
    service::{
        InboundStreamOrigin, NotificationContext, RequestContext, RoleClient, RxJsonRpcMessage,
        TxJsonRpcMessage,
    },
    transport::{IntoTransport, Transport},
};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::AskedClients;
use crate::clients::{Asking, ClientSession, Clients, SessionKey, ToStream};

/// How long a server message waits for what must come before it: the
/// registration of its request (rmcp hands out the token only once the
/// request is on the wire), or the progress notification before it.
const ORDER_GRACE: Duration = Duration::from_secs(1);

/// The client request a downstream request was made for.
#[derive(Clone)]
pub struct Origin {
    pub session: SessionKey,
    /// The client's request id.
    pub request_id: RequestId,
    /// The client's progress token, if it asked for progress.
    pub progress_token: Option<ProgressToken>,
    /// The request's own response stream, when it has one (the client
    /// asked for progress, or may be asked something): its progress and
    /// the server's requests go there, else on the session's own stream.
    pub stream: Option<mpsc::Sender<ToStream>>,
    /// What the client said of itself: a 2026-07-28 server is told the
    /// client's capabilities, not the gateway's, so it asks only for what
    /// the client can give.
    pub handshake: Option<Arc<InitializeRequestParams>>,
}

/// Ids of server requests asked of clients.
static NEXT_QUESTION: AtomicU64 = AtomicU64::new(1);
/// This replica's id, which the ids of its questions carry, so a replica
/// the client's answer lands on can hand it here (`peers.rs`).
static ASKER: std::sync::OnceLock<Box<str>> = std::sync::OnceLock::new();

/// Names this replica in the ids of the questions it asks; once.
pub fn name_questions(replica: &str) {
    let _ = ASKER.set(replica.into());
}

/// Routes one connection's server-to-client traffic.
pub struct Relay {
    server: Arc<str>,
    /// Prefix of the URIs clients see (`Always` naming), if any.
    uri_prefix: Option<Arc<str>>,
    /// The one session a per-session connection serves.
    session: Option<SessionKey>,
    clients: Clients,
    /// Woken when the server says its tools, prompts or resources changed.
    lists_changed: Arc<Notify>,
    /// Requests in flight on this connection, by the token rmcp gave them.
    in_flight: Mutex<HashMap<ProgressToken, Arc<Tracked>>>,
    registered: Notify,
    /// Progress notifications read off the wire so far, per token.
    progress_arrived: Mutex<HashMap<ProgressToken, u64>>,
    /// Upper bound for a server request waiting on a client.
    client_timeout: Duration,
    /// Where a shared connection's first question is noted.
    asked: Option<Arc<AskedClients>>,
}

struct Tracked {
    origin: Origin,
    /// The request's id on this connection, where the transport can say a
    /// server request came on its response stream (streamable HTTP).
    request: Option<RequestId>,
    /// How many of the request's progress notifications have been dealt
    /// with (relayed, or dropped for a client that wants none), in order.
    settled: watch::Sender<u64>,
}

/// Keeps a request registered with its relay until dropped.
pub struct Registration<'a> {
    relay: &'a Relay,
    token: ProgressToken,
    tracked: Arc<Tracked>,
}

/// A progress notification's place among those of its request, stamped
/// as it is read: rmcp handles notifications in concurrent tasks, and this
/// is how the relay restores the server's order.
#[derive(Clone, Copy)]
struct ProgressSeq(u64);

/// A downstream transport that stamps each progress notification with its
/// [`ProgressSeq`] before rmcp sees it.
pub struct Sequenced<T> {
    inner: T,
    relay: Arc<Relay>,
}

/// The gateway's MCP client role towards one downstream connection.
#[derive(Clone)]
pub struct DownstreamClient {
    pub relay: Arc<Relay>,
}

// === impl Relay ===

impl Relay {
    pub fn new(
        server: Arc<str>,
        uri_prefix: Option<Arc<str>>,
        session: Option<SessionKey>,
        clients: Clients,
        lists_changed: Arc<Notify>,
        client_timeout: Duration,
        asked: Option<Arc<AskedClients>>,
    ) -> Self {
        Self {
            server,
            uri_prefix,
            session,
            clients,
            lists_changed,
            in_flight: Mutex::default(),
            registered: Notify::new(),
            progress_arrived: Mutex::default(),
            client_timeout,
            asked,
        }
    }

    /// Registers a request sent under `token` (and `request`, its id, when
    /// rmcp sent it) on behalf of `origin`.
    pub fn register(
        &self,
        token: ProgressToken,
        request: Option<RequestId>,
        origin: Origin,
    ) -> Registration<'_> {
        let tracked = Arc::new(Tracked {
            origin,
            request,
            settled: watch::Sender::new(0),
        });
        self.in_flight.lock().insert(token.clone(), tracked.clone());
        self.registered.notify_waiters();
        Registration {
            relay: self,
            token,
            tracked,
        }
    }

    /// Wraps a transport to this relay's server so progress keeps its order.
    pub fn sequenced<T, E, A>(
        self: &Arc<Self>,
        transport: T,
    ) -> Sequenced<impl Transport<RoleClient, Error = E> + use<T, E, A>>
    where
        T: IntoTransport<RoleClient, E, A>,
        E: std::error::Error + Send + Sync + 'static,
    {
        Sequenced {
            inner: transport.into_transport(),
            relay: self.clone(),
        }
    }

    /// Counts a progress notification read off the wire; its sequence number.
    fn progress_arrived(&self, token: &ProgressToken) -> u64 {
        let mut arrived = self.progress_arrived.lock();
        let count = arrived.entry(token.clone()).or_default();
        *count += 1;
        *count
    }

    async fn tracked(&self, token: &ProgressToken) -> Option<Arc<Tracked>> {
        let lookup = || self.in_flight.lock().get(token).cloned();
        let wait = async {
            loop {
                let registered = self.registered.notified();
                if let Some(tracked) = lookup() {
                    return tracked;
                }
                registered.await;
            }
        };
        tokio::time::timeout(ORDER_GRACE, wait).await.ok()
    }

    /// The client request a server request belongs to: the one session
    /// with requests in flight here (the latest of them).
    fn origin(&self) -> Result<Origin, ErrorData> {
        let in_flight = self.in_flight.lock();
        let mut candidates = in_flight
            .values()
            .filter(|t| self.session.is_none_or(|s| s == t.origin.session));
        let Some(first) = candidates.next() else {
            return Err(self.unroutable("no client request is in flight on this connection"));
        };
        let mut latest = &first.origin;
        for tracked in candidates {
            if tracked.origin.session != latest.session {
                return Err(self.unroutable(
                    "requests of several client sessions are in flight on this shared connection \
                     (a server reached over stdio or SSE then carries one session's calls at a time, \
                     so a retry is answered)",
                ));
            }
            if request_id_after(&tracked.origin.request_id, &latest.request_id) {
                latest = &tracked.origin;
            }
        }
        Ok(latest.clone())
    }

    fn unroutable(&self, why: &str) -> ErrorData {
        ErrorData::internal_error(
            format!(
                "switchboard cannot tell which client session this request from server `{}` is for: {why}",
                self.server
            ),
            None,
        )
    }

    /// The origin of the request with this id on this connection.
    fn origin_of(&self, request: &RequestId) -> Option<Origin> {
        self.in_flight
            .lock()
            .values()
            .find(|t| t.request.as_ref() == Some(request))
            .map(|t| t.origin.clone())
    }

    /// Sends a server's request to the client it belongs to and waits for
    /// the answer; the server cancelling its request cancels it there too.
    /// `came_on`: the stream it arrived on, when the transport can tell
    /// (streamable HTTP). On a call's response stream, that call's client
    /// is asked, however many sessions share the connection.
    async fn ask_client(
        &self,
        request: ServerRequest,
        came_on: Option<InboundStreamOrigin>,
        cancel: CancellationToken,
    ) -> Result<ClientResult, ErrorData> {
        if let Some(InboundStreamOrigin::OutboundRequest(id)) = &came_on {
            // The call it came with is the answer, or there is none: never
            // a guess. It may not be registered yet (rmcp sends first).
            let registered = async {
                loop {
                    let notified = self.registered.notified();
                    if let Some(origin) = self.origin_of(id) {
                        return origin;
                    }
                    notified.await;
                }
            };
            let Ok(origin) = tokio::time::timeout(ORDER_GRACE, registered).await else {
                return Err(self.unroutable(
                    "it came with a request of the gateway's own (a health probe or a list), not a client's call",
                ));
            };
            let stream = stream_to(&self.clients, Some(origin.session), origin.stream)?;
            debug!(server = %self.server, "relaying server request to the client of the call it came with");
            return ask_on_stream(&stream, request, self.client_timeout, cancel).await;
        }
        // Only where nothing says which stream a question came on does
        // keeping sessions apart per connection help.
        if let (Some(asked), None, None) = (&self.asked, self.session, &came_on) {
            asked.record(&self.server, super::Question::of(&request).method());
        }
        // The request may overtake the registration of the call it serves.
        if self.origin().is_err() {
            let registered = async {
                loop {
                    let notified = self.registered.notified();
                    if self.origin().is_ok() {
                        return;
                    }
                    notified.await;
                }
            };
            let _ = tokio::time::timeout(ORDER_GRACE, registered).await;
        }
        // A per-session connection's server may also ask between requests;
        // that, and a request of a client whose request has no stream of
        // its own, goes on the session's own stream.
        let (session, stream) = match self.origin() {
            Ok(origin) => (Some(origin.session), origin.stream),
            Err(error) => match self.session {
                Some(key) => (Some(key), None),
                None => return Err(error),
            },
        };
        let stream = stream_to(&self.clients, session, stream)?;
        debug!(server = %self.server, "relaying server request to client");
        ask_on_stream(&stream, request, self.client_timeout, cancel).await
    }

    /// Tells the sessions subscribed to the server's resource `uri` that
    /// it changed: every subscriber, whoever has calls in flight; a
    /// per-session connection's updates are its own session's.
    pub fn resource_updated(&self, uri: &str) {
        let uri = self.client_uri(uri);
        let audience = match self.session {
            Some(key) => self
                .clients
                .get(key)
                .filter(|session| session.is_subscribed(&uri))
                .into_iter()
                .collect(),
            None => self.clients.subscribed_to(&uri),
        };
        for session in audience {
            let updated = ResourceUpdatedNotification::new(ResourceUpdatedNotificationParam::new(
                uri.clone(),
            ));
            session.notify(ServerNotification::ResourceUpdatedNotification(updated));
        }
    }

    /// The URI clients know a server's resource by.
    fn client_uri(&self, uri: &str) -> String {
        match &self.uri_prefix {
            Some(prefix) => format!("{prefix}+{uri}"),
            None => uri.to_owned(),
        }
    }

    /// Sessions a notification outside any request goes to: the
    /// connection's own session, else the one with requests in flight,
    /// else every session `wanted` selects.
    fn audience(
        &self,
        wanted: impl Fn(&ClientSession) -> bool,
        everyone: impl FnOnce() -> Vec<Arc<ClientSession>>,
    ) -> Vec<Arc<ClientSession>> {
        let only = self
            .session
            .or_else(|| self.origin().ok().map(|o| o.session));
        match only {
            Some(key) => self
                .clients
                .get(key)
                .filter(|session| wanted(session))
                .into_iter()
                .collect(),
            None => everyone(),
        }
    }
}

/// Where to ask a session's client: on the call's own response stream if
/// it has one, else on the session's stream.
fn stream_to(
    clients: &Clients,
    session: Option<SessionKey>,
    stream: Option<mpsc::Sender<ToStream>>,
) -> Result<mpsc::Sender<ToStream>, ErrorData> {
    let client = session.and_then(|key| clients.get(key));
    if let Some(client) = &client {
        match client.asking() {
            Asking::Never => {
                return Err(ErrorData::internal_error(
                    "the client made a one-off request (REST): a server cannot ask it anything mid-call",
                    None,
                ));
            }
            // Questions to a 2026-07-28 client become input-required rounds.
            Asking::InRounds => return Ok(client.outbox.clone()),
            Asking::Directly => {}
        }
    }
    if let Some(stream) = stream {
        return Ok(stream);
    }
    match client {
        Some(session) => Ok(session.outbox.clone()),
        None => Err(ErrorData::internal_error(
            "the client did not answer: its session ended",
            None,
        )),
    }
}

/// Asks the client on `stream` and waits up to `timeout` for the answer,
/// which comes back through the session (`mcp/session.rs`) when the
/// client POSTs it; `cancel` withdraws the question.
async fn ask_on_stream(
    stream: &mpsc::Sender<ToStream>,
    request: ServerRequest,
    timeout: Duration,
    cancel: CancellationToken,
) -> Result<ClientResult, ErrorData> {
    let gone = || ErrorData::internal_error("the client did not answer: it went away", None);
    let number = NEXT_QUESTION.fetch_add(1, Ordering::Relaxed);
    let asker = ASKER.get().map_or("", |asker| asker);
    let id = RequestId::String(format!("sb:{number}@{asker}").into());
    let (answer_to, answer) = oneshot::channel();
    let asked = ToStream::Request {
        id: id.clone(),
        request: Box::new(request),
        answer_to,
    };
    // A stream nobody reads stays full: the wait for room counts too.
    let sent = tokio::time::timeout(timeout, stream.send(asked)).await;
    match sent {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(gone()),
        Err(_) => {
            return Err(ErrorData::internal_error(
                "the client did not answer: its stream stayed full (it reads none)",
                None,
            ));
        }
    }
    // Withdrawn unless answered, also when this future is dropped (a
    // sibling question failed, the call went away).
    let mut withdraw = Withdraw {
        stream,
        id: Some(id),
    };
    tokio::select! {
        answer = tokio::time::timeout(timeout, answer) => match answer {
            Ok(Ok(answer)) => {
                withdraw.id = None;
                answer
            }
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(ErrorData::internal_error(
                format!("the client did not answer within {timeout:?}"),
                None,
            )),
        },
        _ = cancel.cancelled() => Err(ErrorData::internal_error("cancelled by the server", None)),
    }
}

/// Withdraws a question from the client's stream when dropped armed.
struct Withdraw<'a> {
    stream: &'a mpsc::Sender<ToStream>,
    id: Option<RequestId>,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            // A full stream takes it once there is room.
            super::send_soon(self.stream, ToStream::Withdrawn(id));
        }
    }
}

/// Asks the client of the call `origin` a question a 2026-07-28 server's
/// `input_required` result names, as the request of the client's own
/// revision (see `ServerHandle::request`).
pub(super) async fn ask_for_input(
    clients: &Clients,
    origin: &Origin,
    request: ServerRequest,
    timeout: Duration,
    cancel: CancellationToken,
) -> Result<ClientResult, ErrorData> {
    let stream = stream_to(clients, Some(origin.session), origin.stream.clone())?;
    ask_on_stream(&stream, request, timeout, cancel).await
}

/// Whether `a` was issued after `b` (ids a client numbers upwards).
fn request_id_after(a: &RequestId, b: &RequestId) -> bool {
    match (a, b) {
        (RequestId::Number(a), RequestId::Number(b)) => a > b,
        _ => false,
    }
}

// === impl Registration ===

impl Registration<'_> {
    /// Changes each time a progress notification of the request is dealt
    /// with.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.tracked.settled.subscribe()
    }

    /// Waits until every progress notification the server sent before its
    /// response has gone to the client, so none arrives after the response.
    pub async fn settled(&self) {
        let arrived = self.relay.progress_arrived.lock().get(&self.token).copied();
        if let Some(arrived) = arrived {
            let mut settled = self.tracked.settled.subscribe();
            let all_out = settled.wait_for(|s| *s >= arrived);
            if tokio::time::timeout(ORDER_GRACE, all_out).await.is_err() {
                debug!(server = %self.relay.server, "response sent before all of its progress was relayed");
            }
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.relay.in_flight.lock().remove(&self.token);
        self.relay.progress_arrived.lock().remove(&self.token);
    }
}

// === impl Sequenced ===

impl<T: Transport<RoleClient>> Transport<RoleClient> for Sequenced<T> {
    type Error = T::Error;

    fn name() -> Cow<'static, str> {
        T::name()
    }

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleClient>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.inner.send(item)
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleClient>> {
        let mut message = self.inner.receive().await?;
        if let ServerJsonRpcMessage::Notification(notification) = &mut message
            && let ServerNotification::ProgressNotification(progress) =
                &mut notification.notification
        {
            let seq = self.relay.progress_arrived(&progress.params.progress_token);
            progress.extensions.insert(ProgressSeq(seq));
        }
        Some(message)
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.close()
    }
}

// === impl DownstreamClient ===

/// The stream a server request came on, if the transport recorded it.
fn came_on(context: &RequestContext<RoleClient>) -> Option<InboundStreamOrigin> {
    context.extensions.get::<InboundStreamOrigin>().cloned()
}

impl ClientHandler for DownstreamClient {
    fn get_info(&self) -> ClientConfig {
        let mut capabilities = ClientCapabilities::default();
        capabilities.sampling = Some(Default::default());
        capabilities.elicitation = Some(ElicitationCapability::default());
        capabilities.roots = Some(RootsCapabilities::default());
        ClientConfig::new(
            capabilities,
            Implementation::new("switchboard-gateway", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let request = ServerRequest::CreateMessageRequest(CreateMessageRequest::new(params));
        match self
            .relay
            .ask_client(request, came_on(&context), context.ct)
            .await?
        {
            ClientResult::CreateMessageResult(result) => Ok(*result),
            _ => Err(unexpected_answer("sampling/createMessage")),
        }
    }

    async fn create_elicitation(
        &self,
        params: ElicitRequestParams,
        context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let request = ServerRequest::ElicitRequest(ElicitRequest::new(params));
        match self
            .relay
            .ask_client(request, came_on(&context), context.ct)
            .await?
        {
            ClientResult::ElicitResult(result) => Ok(result),
            _ => Err(unexpected_answer("elicitation/create")),
        }
    }

    async fn list_roots(
        &self,
        context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        let request = ServerRequest::ListRootsRequest(ListRootsRequest::default());
        match self
            .relay
            .ask_client(request, came_on(&context), context.ct)
            .await?
        {
            ClientResult::ListRootsResult(result) => Ok(result),
            _ => Err(unexpected_answer("roots/list")),
        }
    }

    async fn on_progress(
        &self,
        mut params: ProgressNotificationParam,
        context: NotificationContext<RoleClient>,
    ) {
        let relay = &self.relay;
        let Some(tracked) = relay.tracked(&params.progress_token).await else {
            // Not (or no longer) a request of ours: nothing will settle it.
            relay.progress_arrived.lock().remove(&params.progress_token);
            return;
        };
        // Every downstream transport is `Sequenced`; 0 would mean "not
        // numbered": no turn to wait for, nothing to settle.
        let seq = context
            .extensions
            .get::<ProgressSeq>()
            .map_or(0, |seq| seq.0);
        // The previous one first; bounded, so a lost one cannot stall the rest.
        let mut settled = tracked.settled.subscribe();
        let turn = settled.wait_for(|s| *s + 1 >= seq);
        if tokio::time::timeout(ORDER_GRACE, turn).await.is_err() {
            debug!(server = %relay.server, seq, "progress relayed out of turn: an earlier one never came");
        }
        if let Some(token) = tracked.origin.progress_token.clone() {
            params.progress_token = token;
            match &tracked.origin.stream {
                Some(stream) => {
                    let _ = stream.send(ToStream::Progress(Box::new(params))).await;
                }
                None => {
                    if let Some(session) = relay.clients.get(tracked.origin.session) {
                        let progress = ProgressNotification::new(params);
                        session.notify(ServerNotification::ProgressNotification(progress));
                    }
                }
            }
        }
        tracked.settled.send_if_modified(|settled| {
            let advanced = seq > *settled;
            *settled = (*settled).max(seq);
            advanced
        });
    }

    async fn on_logging_message(
        &self,
        mut params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let server = &self.relay.server;
        params.logger = Some(match params.logger.take() {
            Some(logger) => format!("{server}/{logger}"),
            None => server.to_string(),
        });
        let level = params.level;
        let audience = self.relay.audience(
            |session| session.wants_log(level),
            || self.relay.clients.logging_at(level),
        );
        for session in audience {
            let message = LoggingMessageNotification::new(params.clone());
            session.notify(ServerNotification::LoggingMessageNotification(message));
        }
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.relay.resource_updated(&params.uri);
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.relay.lists_changed.notify_one();
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.relay.lists_changed.notify_one();
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.relay.lists_changed.notify_one();
    }
}

fn unexpected_answer(method: &str) -> ErrorData {
    ErrorData::internal_error(
        format!("the client answered {method} with another result"),
        None,
    )
}
