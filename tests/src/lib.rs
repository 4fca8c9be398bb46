//! Harness for the end-to-end tests: starts the real `switchboard-control`
//! and `switchboard-gateway` binaries on loopback ports, gives each test its
//! own registry directory, and connects real MCP clients.
//!
//! The binaries are looked up next to the test executable's `deps/` folder
//! (`target/<profile>/`), which `cargo test --workspace` fills.

pub mod fake_control_plane;
pub mod kube_apiserver;
pub mod otlp;
mod raw_session;
pub mod scripted_replica;

pub use raw_session::{Events, RawSession};

use std::{
    future::Future,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use nix::{sys::signal::Signal, unistd::Pid};
use reqwest::header::{HeaderName, HeaderValue};
use rmcp::{
    ClientHandler, ServiceExt,
    model::{CallToolRequestParams, CallToolResult, ClientConfig, Implementation, Tool},
    service::{NotificationContext, RoleClient, RunningService},
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// Generous bound for anything "eventually" true; tests fail past it.
pub const EVENTUALLY: Duration = Duration::from_secs(20);

/// Calls `check` until it returns `Some`, or fails after `timeout` with the
/// last value seen.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if tokio::time::Instant::now() > deadline => {
                panic!("timed out waiting for {what}; last observation: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The directory holding the built binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("test executable has a parent");
    let dir = if deps.ends_with("deps") {
        deps.parent().expect("deps has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    };
    for bin in ["switchboard-control", "switchboard-gateway"] {
        assert!(
            dir.join(bin).is_file(),
            "{bin} not found in {}: run `cargo test --workspace` (or `cargo build --workspace`) first",
            dir.display()
        );
    }
    dir
}

/// A free loopback port. Ports come from below Linux's ephemeral range
/// (32768+), so outgoing connections of concurrent tests never take them
/// between this check and the server's bind; a counter keeps the tests of
/// one process apart, and the pid spreads concurrent processes.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::AtomicU16;
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let offset = (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + (offset.wrapping_add(n) % SPAN);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + SPAN)
}

/// `PATH` with the build directory first, so registries can name
/// `switchboard-gateway demo-server`.
fn path_with_bins() -> std::ffi::OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(bin_dir()).chain(std::env::split_paths(&path)))
        .expect("PATH entries are joinable")
}

/// A child process that gets SIGTERM (then SIGKILL) when dropped.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with the build directory on `PATH`, stdout and
    /// stderr into `log`, and, unless the command sets its own, `RUST_LOG` from
    /// `SWITCHBOARD_TEST_LOG` (default: debug for Switchboard's own crates).
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Self {
        let has_level = command
            .as_std()
            .get_envs()
            .any(|(key, _)| key == "RUST_LOG");
        if !has_level {
            let level = std::env::var("SWITCHBOARD_TEST_LOG")
                .unwrap_or_else(|_| "info,data_plane=debug,control_plane=debug".to_owned());
            command.env("RUST_LOG", level);
        }
        let file = std::fs::File::create(&log).expect("create process log");
        let stdout = file.try_clone().expect("share the process log");
        command
            .env("PATH", path_with_bins())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(file)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name}: {e}"));
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGKILL and reaps the process: a crash, not a shutdown.
    pub async fn kill_hard(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Waits for the process to exit, however it ends.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        self.child
            .wait()
            .await
            .unwrap_or_else(|e| panic!("waiting for {}: {e}", self.name))
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM)?;
        }
        tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .with_context(|| format!("{} did not exit after SIGTERM", self.name))?
            .context("waiting for exit")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            // Give it a moment to stop its own children; kill_on_drop follows.
            for _ in 0..50 {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A registry directory plus the control plane and gateway serving it.
pub struct Switchboard {
    pub dir: tempfile::TempDir,
    pub grpc: SocketAddr,
    pub control_http: SocketAddr,
    pub gateway_addr: SocketAddr,
    pub control: Option<Process>,
    pub gateway: Option<Process>,
    /// Extra arguments for `switchboard-control serve`.
    pub control_args: Vec<String>,
    /// Extra arguments for every `switchboard-gateway run`.
    pub gateway_args: Vec<String>,
    http: reqwest::Client,
    /// Extra environment for every gateway replica.
    pub gateway_env: Vec<(String, String)>,
    /// How replicas dial the control plane: `http`, or `https` when it
    /// serves TLS.
    pub grpc_scheme: &'static str,
}

/// The gateway's https support makes reqwest (shared by the whole
/// workspace build) require a process-wide TLS provider before any client
/// is built; every harness entry point installs it.
pub fn install_tls_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Switchboard {
    fn new(grpc: SocketAddr) -> Self {
        install_tls_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("registry")).expect("registry dir");
        Self {
            dir,
            grpc,
            control_http: free_addr(),
            gateway_addr: free_addr(),
            control: None,
            gateway: None,
            control_args: Vec::new(),
            gateway_args: Vec::new(),
            gateway_env: Vec::new(),
            grpc_scheme: "http",
            http: reqwest::Client::new(),
        }
    }

    /// Nothing started yet, on fresh ports: for tests that start the
    /// pieces themselves.
    pub fn unstarted() -> Self {
        Self::new(free_addr())
    }

    /// Starts only a gateway, connected to a control plane the test runs.
    pub async fn gateway_only(grpc: SocketAddr) -> Self {
        let mut sb = Self::new(grpc);
        sb.start_gateway().await;
        let url = format!("http://{}/healthz", sb.gateway_addr);
        let http = sb.http.clone();
        eventually("the gateway to listen", EVENTUALLY, || {
            let (http, url) = (http.clone(), url.clone());
            async move { get_status(&http, &url).await.filter_ok(200) }
        })
        .await;
        sb
    }

    /// Starts both planes with the given registry files and waits until the
    /// gateway has applied its first snapshot.
    pub async fn start(files: &[(&str, &str)]) -> Self {
        Self::start_with(files, &[], &[]).await
    }

    /// [`Switchboard::start`] with extra arguments for each plane.
    pub async fn start_with(
        files: &[(&str, &str)],
        control_args: &[&str],
        gateway_args: &[&str],
    ) -> Self {
        let mut sb = Self::new(free_addr());
        sb.control_args = control_args.iter().map(|a| a.to_string()).collect();
        sb.gateway_args = gateway_args.iter().map(|a| a.to_string()).collect();
        for (name, text) in files {
            sb.write_file(name, text);
        }
        sb.start_control_plane().await;
        sb.start_gateway().await;
        sb.wait_gateway_ready().await;
        sb
    }

    pub fn registry(&self) -> PathBuf {
        self.dir.path().join("registry")
    }

    /// Writes a registry file atomically (write + rename), as editors do.
    pub fn write_file(&self, name: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write registry file");
        std::fs::rename(&tmp, self.registry().join(name)).expect("move registry file");
    }

    pub fn remove_file(&self, name: &str) {
        std::fs::remove_file(self.registry().join(name)).expect("remove registry file");
    }

    pub async fn start_control_plane(&mut self) {
        let mut command = Command::new(bin_dir().join("switchboard-control"));
        command
            .arg("serve")
            .arg("--registry")
            .arg(self.registry())
            .arg("--grpc-listen")
            .arg(self.grpc.to_string())
            .arg("--http-listen")
            .arg(self.control_http.to_string())
            .args(&self.control_args);
        let log = self.log_path("control-plane");
        self.control = Some(Process::spawn("switchboard-control", command, log));
        let url = format!("http://{}/healthz", self.control_http);
        let http = self.http.clone();
        eventually("the control plane to listen", EVENTUALLY, || {
            let (http, url) = (http.clone(), url.clone());
            async move { get_status(&http, &url).await.filter_ok(200) }
        })
        .await;
    }

    pub async fn start_gateway(&mut self) {
        let gateway = self.spawn_replica(self.gateway_addr, "e2e-0");
        self.gateway = Some(gateway);
    }

    /// Starts a gateway replica on `listen` connected to this control plane.
    pub fn spawn_replica(&self, listen: SocketAddr, replica_id: &str) -> Process {
        self.spawn_replica_with(listen, replica_id, &[])
    }

    /// [`Switchboard::spawn_replica`] with extra `run` arguments.
    pub fn spawn_replica_with(
        &self,
        listen: SocketAddr,
        replica_id: &str,
        args: &[&str],
    ) -> Process {
        let mut command = Command::new(bin_dir().join("switchboard-gateway"));
        command
            .arg("run")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--control-plane")
            .arg(format!("{}://{}", self.grpc_scheme, self.grpc))
            .arg("--replica-id")
            .arg(replica_id)
            .args(&self.gateway_args)
            .args(args)
            .envs(self.gateway_env.iter().cloned());
        let log = self.log_path(replica_id);
        Process::spawn("switchboard-gateway", command, log)
    }

    pub fn log_path(&self, what: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("{what}-{n}.log"))
    }

    pub async fn wait_gateway_ready(&self) {
        let url = format!("http://{}/readyz", self.gateway_addr);
        let http = self.http.clone();
        eventually(
            "the gateway to apply its first snapshot",
            EVENTUALLY,
            || {
                let (http, url) = (http.clone(), url.clone());
                async move { get_status(&http, &url).await.filter_ok(200) }
            },
        )
        .await;
    }

    /// Starts the demo server serving streamable HTTP on `addr` and waits
    /// until it accepts connections.
    pub async fn spawn_demo_http(&self, addr: SocketAddr, instance: &str) -> Process {
        let mut command = Command::new(bin_dir().join("switchboard-gateway"));
        command
            .args(["demo-server", "--instance", instance, "--http"])
            .arg(addr.to_string());
        let process = Process::spawn("demo-server --http", command, self.log_path("demo-http"));
        wait_listening("the HTTP demo server", addr).await;
        process
    }

    pub fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.gateway_addr)
    }

    /// `GET /healthz` of the gateway.
    pub async fn health(&self) -> Value {
        self.get_json(&format!("http://{}/healthz", self.gateway_addr))
            .await
            .expect("gateway /healthz")
    }

    /// `GET /status` of the control plane.
    pub async fn control_status(&self) -> Value {
        self.get_json(&format!("http://{}/status", self.control_http))
            .await
            .expect("control plane /status")
    }

    /// The control plane's `/traces?{query}` once it holds at least one
    /// trace (traces arrive in batches, a moment after the call).
    pub async fn wait_traces(&self, query: &str) -> Value {
        let url = format!("http://{}/traces?{query}", self.control_http);
        eventually(&format!("traces for {query}"), EVENTUALLY, || async {
            let traces = self.get_json(&url).await.map_err(|e| e.to_string())?;
            (traces["traces"].as_array().is_some_and(|t| !t.is_empty()))
                .then(|| traces.clone())
                .ok_or(traces.to_string())
        })
        .await
    }

    /// GET a URL: status code and body.
    pub async fn get_text(&self, url: &str) -> anyhow::Result<(u16, String)> {
        let response = self.http.get(url).send().await?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    /// The gateway's `/metrics` exposition (read values with [`metric`]).
    pub async fn gateway_metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.gateway_addr);
        let (status, text) = self.get_text(&url).await.expect("GET /metrics");
        assert_eq!(status, 200, "{text}");
        text
    }

    pub async fn get_json(&self, url: &str) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Waits until the gateway reports `server` in `state`.
    pub async fn wait_server_state(&self, server: &str, state: &str) -> Value {
        eventually(
            &format!("server {server} to be {state}"),
            EVENTUALLY,
            || async {
                let health = self.health().await;
                let entry = &health["servers"][server];
                if entry["state"] == state {
                    Ok(entry.clone())
                } else {
                    Err(health.to_string())
                }
            },
        )
        .await
    }

    /// Both processes' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for process in [&self.control, &self.gateway].into_iter().flatten() {
            out.push_str(&format!("==== {} ====\n{}\n", process.name, process.log()));
        }
        out
    }
}

trait StatusExt {
    fn filter_ok(self, want: u16) -> Result<(), String>;
}

impl StatusExt for Result<u16, String> {
    fn filter_ok(self, want: u16) -> Result<(), String> {
        match self {
            Ok(status) if status == want => Ok(()),
            Ok(status) => Err(format!("HTTP {status}")),
            Err(e) => Err(e),
        }
    }
}

async fn get_status(http: &reqwest::Client, url: &str) -> Result<u16, String> {
    http.get(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// A test MCP client that counts `tools/list_changed` notifications.
#[derive(Clone, Default)]
pub struct TestClient {
    pub tools_changed: Arc<AtomicUsize>,
}

impl ClientHandler for TestClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            Default::default(),
            Implementation::new("switchboard-e2e", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(rmcp::model::ProtocolVersion::LATEST_WITH_INITIALIZE)
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.tools_changed.fetch_add(1, Ordering::SeqCst);
    }
}

pub type McpClient = RunningService<RoleClient, TestClient>;

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_listening(what: &str, addr: SocketAddr) {
    eventually(&format!("{what} to listen"), EVENTUALLY, || async {
        tokio::net::TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await;
}

/// Connects an MCP client over streamable HTTP and initialises a session.
pub async fn connect(url: &str) -> anyhow::Result<McpClient> {
    install_tls_provider();
    let transport = StreamableHttpClientTransport::from_uri(url.to_owned());
    Ok(TestClient::default().serve(transport).await?)
}

/// A client's first request on streamable HTTP, raw: an `initialize` POST
/// (no session yet) with the request id `id`, for tests that look at the
/// HTTP answer itself.
pub fn initialize_post(http: &reqwest::Client, url: &str, id: Value) -> reqwest::RequestBuilder {
    let initialize = json!({ "jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": { "name": "raw-e2e", "version": "1" } } });
    http.post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&initialize)
}

/// Connects like [`connect`], sending `headers` with every HTTP request.
pub async fn connect_with_headers(
    url: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<McpClient> {
    install_tls_provider();
    let mut config = StreamableHttpClientTransportConfig::with_uri(url.to_owned());
    for (name, value) in headers {
        config.custom_headers.insert(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(value)?,
        );
    }
    let transport = StreamableHttpClientTransport::from_config(config);
    Ok(TestClient::default().serve(transport).await?)
}

/// The value of one sample in a Prometheus/OpenMetrics text exposition:
/// `name` with exactly `labels` (in any order).
pub fn metric(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let mut found: Vec<(&str, &str)> = series_labels
                .split(',')
                .filter(|l| !l.is_empty())
                .filter_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            let mut wanted = labels.to_vec();
            found.sort_unstable();
            wanted.sort_unstable();
            (found == wanted).then(|| value.parse().ok()).flatten()
        })
}

/// Sorted tool names.
pub async fn tool_names(client: &McpClient) -> anyhow::Result<Vec<String>> {
    let tools: Vec<Tool> = client.list_all_tools().await?;
    let mut names: Vec<String> = tools.into_iter().map(|t| t.name.into_owned()).collect();
    names.sort();
    Ok(names)
}

/// Calls a tool with JSON arguments.
pub async fn call(client: &McpClient, tool: &str, args: Value) -> anyhow::Result<CallToolResult> {
    let Value::Object(arguments) = args else {
        bail!("arguments must be a JSON object")
    };
    let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
    Ok(client.call_tool(params).await?)
}

/// An `McpServer` YAML for the bundled demo server. `instance` ends up on
/// the process's command line, so tests can find the process.
pub fn demo_server_yaml(name: &str, instance: &str, env: &[(&str, &str)]) -> String {
    let env: Vec<Value> = env
        .iter()
        .map(|(k, v)| json!({ "name": k, "value": v }))
        .collect();
    let doc = json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "McpServer",
        "metadata": { "name": name },
        "spec": {
            "transport": { "stdio": {
                "command": "switchboard-gateway",
                "args": ["demo-server", "--instance", instance],
                "env": env,
            } }
        }
    });
    // JSON is valid YAML.
    doc.to_string()
}

/// An `McpServer` YAML for the demo server with extra demo-server
/// arguments and extra `spec` fields (pool, timeouts, breaker, …).
pub fn demo_server_with(name: &str, instance: &str, demo_args: &[&str], spec: Value) -> String {
    let mut args = vec!["demo-server", "--instance", instance];
    args.extend_from_slice(demo_args);
    server_with(name, "switchboard-gateway", &args, spec)
}

/// An `McpServer` YAML for any command, with extra `spec` fields.
pub fn server_with(name: &str, command: &str, args: &[&str], spec: Value) -> String {
    let mut doc = json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "McpServer",
        "metadata": { "name": name },
        "spec": { "transport": { "stdio": { "command": command, "args": args } } }
    });
    if let (Some(target), Value::Object(extra)) = (doc["spec"].as_object_mut(), spec) {
        target.extend(extra);
    }
    doc.to_string()
}

/// A stdio server that never speaks MCP, ignores SIGTERM and forks a
/// grandchild (`sleep 7780.<tag>`, ignoring SIGTERM too) as it starts:
/// only SIGKILL ends it. Its shell's command line carries `stubborn-<tag>`.
pub fn stubborn_server_yaml(name: &str, tag: &str) -> String {
    let script = format!("trap '' TERM; sleep 7780.{tag} & while :; do sleep 1; done");
    let marker = format!("stubborn-{tag}");
    server_with(name, "sh", &["-c", &script, &marker], json!({}))
}

/// The `@modelcontextprotocol/server-everything` binary `npm ci` put
/// under `tests/npm`.
pub fn everything_bin() -> String {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("npm/node_modules/.bin/mcp-server-everything");
    require_tool("mcp-server-everything", bin, "`npm ci --prefix tests/npm`")
        .display()
        .to_string()
}

/// An `McpServer` YAML running server-everything over stdio, with `spec`
/// merged into its spec.
pub fn everything_server_yaml(name: &str, spec: Value) -> String {
    server_with(name, &everything_bin(), &["stdio"], spec)
}

/// An `McpServer` YAML running an arbitrary command.
pub fn command_server_yaml(name: &str, command: &str, args: &[&str]) -> String {
    json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "McpServer",
        "metadata": { "name": name },
        "spec": { "transport": { "stdio": { "command": command, "args": args } } }
    })
    .to_string()
}

/// The SHA-256 of `token` in hex, as `McpClient.spec.token.sha256` holds it.
pub fn token_sha256(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The text of a result's first content block.
pub fn text(result: &CallToolResult) -> String {
    result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default()
}

/// Processes whose command line mentions `needle`, from `/proc`.
pub fn processes_matching(needle: &str) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            cmdline.contains(needle).then_some((pid, cmdline))
        })
        .collect()
}

// === Locating the external tools the tests use ===
//
// `.ci/test` installs all of them inside the repository; a missing one
// fails its test with one line naming the command to run.

/// How to install the Python packages alone (`.ci/test` does it too).
pub const PIP_INSTALL: &str = "`.ci/venv/bin/pip install -r .ci/requirements.txt`";

/// The repository root.
pub fn repo_root() -> PathBuf {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    tests
        .parent()
        .expect("tests/ is in the repository")
        .to_path_buf()
}

/// The Python the tests run, and name in the registries they write:
/// `.ci/venv/bin/python3` once `.ci/test` has made the venv, else `python3`
/// on `PATH` (with the packages of `.ci/requirements.txt` installed some
/// other way).
pub fn python() -> PathBuf {
    let venv = repo_root().join(".ci/venv/bin/python3");
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// `path`, if it is a file; otherwise fails the test with one line saying
/// `what` is missing and to run `.ci/test` (or `alternative`, which
/// installs just that).
pub fn require_tool(what: &str, path: PathBuf, alternative: &str) -> PathBuf {
    assert!(
        path.is_file(),
        "{what} not found at {}: run `.ci/test` (or {alternative})",
        path.display()
    );
    path
}

/// Fails the test with one line unless [`python()`] imports `module`, from
/// the PyPI package `package` pinned in `.ci/requirements.txt`.
pub fn require_python_module(module: &str, package: &str) {
    let python = python();
    let imported = std::process::Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        imported,
        "Python module {module} (PyPI {package}) not found for {}: run `.ci/test` (or {PIP_INSTALL})",
        python.display()
    );
}

/// Runs a Python `script` (`python -c`) with `input` on its stdin.
pub fn python_with_input(script: &str, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new(python())
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write python's stdin");
    child.wait_with_output().expect("python ends")
}

/// Checks an OpenAPI document with `openapi-spec-validator` (PyPI), and
/// that the schema at `schema` (a `#/components/...` pointer) accepts each
/// of `valid` and refuses each of `invalid`.
pub fn check_openapi(document: &Value, schema: &str, valid: &[Value], invalid: &[Value]) {
    require_python_module("openapi_spec_validator", "openapi-spec-validator");
    let script = r#"
import json, sys
from openapi_spec_validator import validate
from jsonschema import Draft202012Validator
case = json.load(sys.stdin)
document = case["document"]
validate(document)
checker = Draft202012Validator({"$ref": case["schema"], "components": document["components"]})
for body in case["valid"]:
    errors = [e.message for e in checker.iter_errors(body)]
    assert not errors, (body, errors)
for body in case["invalid"]:
    assert list(checker.iter_errors(body)), ("accepted", body)
print("ok")
"#;
    let case =
        json!({ "document": document, "schema": schema, "valid": valid, "invalid": invalid });
    let output = python_with_input(script, case.to_string().as_bytes());
    assert!(
        output.status.success(),
        "the OpenAPI document or its schema failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A POST of the 2026-07-28 wire: `_meta` as the revision wants it (less
/// what `drop` names, plus what `params` brings in its own `_meta`), the
/// headers it wants (`headers` replacing them).
pub async fn post_2026(
    url: &str,
    method: &str,
    params: Value,
    headers: &[(&str, &str)],
    drop: &[&str],
) -> (u16, Value) {
    let mut meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": { "name": "raw-2026", "version": "1" },
    });
    for key in drop {
        meta.as_object_mut()
            .map(|m| m.remove(&format!("io.modelcontextprotocol/{key}")));
    }
    if let (Some(meta), Some(own)) = (meta.as_object_mut(), params["_meta"].as_object()) {
        meta.extend(own.clone());
    }
    let mut params = params;
    params["_meta"] = meta;
    let name = params["name"].as_str().or(params["uri"].as_str());
    let mut wanted = vec![
        ("mcp-protocol-version", "2026-07-28".to_owned()),
        ("mcp-method", method.to_owned()),
    ];
    if let Some(name) = name {
        wanted.push(("mcp-name", name.to_owned()));
    }
    let mut request = reqwest::Client::new()
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({ "jsonrpc": "2.0", "id": 7, "method": method, "params": params }));
    for (header, value) in &wanted {
        if let Some((_, replaced)) = headers.iter().find(|(h, _)| h == header) {
            if !replaced.is_empty() {
                request = request.header(*header, *replaced);
            }
        } else {
            request = request.header(*header, value);
        }
    }
    let response = request.send().await.expect("POST");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .ok()
        .or_else(|| {
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                .find(|m| m.get("id").is_some())
        })
        .unwrap_or(Value::Null);
    (status, body)
}
