//! `switchboard-control up`: the one-command local setup. Runs the control
//! plane in this process and gateway replicas (one, or `--replicas N`) as
//! child processes, which connect back over the same gRPC stream a cluster
//! uses. The planes stay separate programs; only the binary's location is
//! shared.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use process_wrap::tokio::{ChildWrapper, CommandWrap, KillOnDrop};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tracing::{info, warn};

use crate::{app, auth::Token};

const GATEWAY_BINARY: &str = "switchboard-gateway";
/// How long a fresh gateway may take to apply its first snapshot.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Grace period between SIGTERM and SIGKILL for a gateway: longer than
/// its drain (`--drain-timeout`, 25 s), closing (2 s) and servers'
/// teardown together.
const STOP_GRACE: Duration = Duration::from_secs(35);
const SIGTERM: i32 = 15;
/// What the gateway reads its control-plane token from.
const CONTROL_PLANE_TOKEN_ENV: &str = "SWITCHBOARD_CONTROL_PLANE_TOKEN";
/// What the gateway reads the CA of the control plane's gRPC port from.
const CONTROL_PLANE_CA_ENV: &str = "SWITCHBOARD_CONTROL_PLANE_CA";

#[derive(Clone, Debug)]
pub struct UpConfig {
    pub control_plane: app::Config,
    /// Where `up` put the admin token it made, if it made one.
    pub admin_token_file: Option<PathBuf>,
    /// Where the first gateway serves MCP; replica k listens on its port
    /// + 10·k.
    pub gateway_listen: SocketAddr,
    pub replicas: u16,
    /// The gateway's `--log-format`, so both processes log alike.
    pub log_format: String,
}

/// Runs until `stop` resolves or a gateway exits on its own.
pub async fn up(config: UpConfig, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let gateway_bin = gateway_binary()?;
    let token = config.control_plane.replica_token.clone();
    let ca = config
        .control_plane
        .grpc_tls
        .as_ref()
        .map(|tls| tls.ca_pem.clone());
    let listens = replica_addresses(config.gateway_listen, config.replicas)?;
    let control = app::run(config.control_plane).await?;
    let mut gateways = Vec::new();
    let mut started = Ok(());
    for (k, listen) in listens.iter().enumerate() {
        let spawned = spawn_gateway(
            &gateway_bin,
            control.grpc_addr,
            *listen,
            k,
            &config.log_format,
            token.as_ref(),
            ca.as_deref(),
        );
        match spawned {
            Ok(gateway) => gateways.push(gateway),
            Err(err) => {
                started = Err(err);
                break;
            }
        }
    }
    for (gateway, listen) in gateways.iter_mut().zip(&listens) {
        if started.is_ok() {
            started = wait_ready(*listen, gateway).await;
        }
    }
    let result = match started {
        Ok(()) => {
            let first = listens[0];
            println!(
                "\nSwitchboard is up.\n  MCP endpoint:   http://{first}/mcp\n  gateway health: http://{first}/healthz\n  control plane:  http://{cp}/status (with the admin token)\n  registry:       edit the YAML files in that directory; changes apply live",
                cp = control.http_addr,
            );
            // A line of its own, starting `console:`, for scripts; the
            // code in the fragment logs one browser in, once.
            match &control.console_login {
                Some(code) => println!(
                    "console: http://{}/#login={}",
                    control.http_addr,
                    code.expose()
                ),
                None => println!("console: http://{}/", control.http_addr),
            }
            if listens.len() > 1 {
                // Any replica serves any session: put them behind one address.
                for (k, listen) in listens.iter().enumerate() {
                    println!("  replica {k}:      http://{listen}/mcp");
                }
            }
            println!("Press Ctrl+C to stop.\n");
            if let Some(path) = &config.admin_token_file {
                // A line of its own, so scripts and the CLI can find it.
                println!("admin token file: {}", path.display());
            }
            let exited =
                futures::future::select_all(gateways.iter_mut().map(|g| Box::pin(g.wait())));
            tokio::select! {
                () = stop => Ok(()),
                (status, k, _) = exited => {
                    Err(anyhow::anyhow!("gateway replica {k} exited unexpectedly ({status:?})"))
                }
            }
        }
        Err(err) => Err(err),
    };
    futures::future::join_all(gateways.into_iter().map(stop_gateway)).await;
    control.shutdown_trigger().cancel();
    control.wait().await;
    result
}

/// Replica k's address: the first's port + 10·k.
fn replica_addresses(first: SocketAddr, replicas: u16) -> anyhow::Result<Vec<SocketAddr>> {
    (0..replicas)
        .map(|k| {
            let port = first.port().checked_add(k * 10).with_context(|| {
                format!(
                    "replica {k}: port {} + {} is beyond 65535",
                    first.port(),
                    k * 10
                )
            })?;
            Ok(SocketAddr::new(first.ip(), port))
        })
        .collect()
}

/// Writes a fresh admin token where its user alone can read it (mode
/// 0600, directory 0700): `$XDG_STATE_HOME/switchboard/admin-token`, else
/// `~/.local/state/switchboard/admin-token`. Returns the path.
pub fn write_admin_token(token: &Token) -> anyhow::Result<PathBuf> {
    use std::{
        io::Write,
        os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    };
    let path = admin_token_path()?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    // An existing file keeps its mode on open: make it private too.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(file, "{}", token.expose())?;
    Ok(path)
}

/// The registry `up` uses without `--registry`: the checkout's, else the
/// user's (which may not exist yet).
pub fn registry_path() -> anyhow::Result<PathBuf> {
    let checkout = PathBuf::from("deploy/local/registry");
    if checkout.is_dir() {
        return Ok(checkout);
    }
    registry_home()
}

/// The user's registry directory (which may not exist yet).
pub fn registry_home() -> anyhow::Result<PathBuf> {
    Ok(user_dir("XDG_CONFIG_HOME", ".config")
        .context("neither XDG_CONFIG_HOME nor HOME is set: pass --registry DIR")?
        .join("switchboard/registry"))
}

/// Where `up` keeps its admin token, and `check` looks for it.
pub fn admin_token_path() -> anyhow::Result<PathBuf> {
    let state = user_dir("XDG_STATE_HOME", ".local/state")
        .context("neither XDG_STATE_HOME nor HOME is set: nowhere to keep the admin token (pass --admin-token-file)")?;
    Ok(state.join("switchboard").join("admin-token"))
}

/// `$<xdg>`, else `$HOME/<fallback>` (the XDG base directories).
fn user_dir(xdg: &str, fallback: &str) -> Option<PathBuf> {
    std::env::var_os(xdg)
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(fallback)))
}

/// The registry of the repository's quick start, bundled so an installed
/// binary has one too.
const DEMO_REGISTRY: [(&str, &str); 2] = [
    (
        "demo.yaml",
        include_str!("../../deploy/local/registry/demo.yaml"),
    ),
    (
        "utils.yaml",
        include_str!("../../deploy/local/registry/utils.yaml"),
    ),
];

/// Where the quick start's registry is when `--registry` is not given:
/// `./deploy/local/registry` in a checkout of the repository, else
/// `switchboard/registry` in the user's config directory, created with the
/// demo servers the first time (and left as the user keeps it after).
pub fn default_registry() -> anyhow::Result<PathBuf> {
    let home = registry_path()?;
    if !home.exists() {
        std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
        for (name, text) in DEMO_REGISTRY {
            let path = home.join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        println!(
            "created a registry directory with the demo servers: {}",
            home.display()
        );
    }
    Ok(home)
}

/// The gateway binary next to this one (both come out of one `cargo build`).
pub fn gateway_binary() -> anyhow::Result<PathBuf> {
    sibling_binary(GATEWAY_BINARY)
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating switchboard-control")?;
    let dir = me.parent().unwrap_or(Path::new("."));
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{name} not found next to {} (hint: build both binaries with `cargo build --release`)",
            me.display()
        );
    }
    Ok(path)
}

fn spawn_gateway(
    binary: &Path,
    control_plane: SocketAddr,
    listen: SocketAddr,
    replica: usize,
    log_format: &str,
    token: Option<&Token>,
    ca_pem: Option<&str>,
) -> anyhow::Result<Box<dyn ChildWrapper>> {
    let mut command = tokio::process::Command::new(binary);
    // In the environment, not the arguments: those show in `ps`.
    if let Some(token) = token {
        command.env(CONTROL_PLANE_TOKEN_ENV, token.expose());
    }
    let scheme = match ca_pem {
        Some(ca) => {
            command.env(CONTROL_PLANE_CA_ENV, ca);
            "https"
        }
        None => "http",
    };
    command
        .arg("--log-format")
        .arg(log_format)
        .arg("run")
        .arg("--control-plane")
        .arg(format!("{scheme}://{control_plane}"))
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--replica-id")
        .arg(format!("local-{replica}"))
        // The gateway stops with `up`, even if `up` is killed.
        .arg("--parent")
        .arg(std::process::id().to_string());
    // The example registry starts `switchboard-gateway demo-server`, so put
    // the build directory on the gateway's PATH.
    if let Some(dir) = binary.parent() {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let joined = std::env::join_paths(
            std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path)),
        )
        .context("building PATH for the gateway")?;
        command.env("PATH", joined);
    }
    let mut wrapped = CommandWrap::from(command);
    wrapped.wrap(KillOnDrop);
    let child = wrapped
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    info!(pid = child.id(), replica, %listen, "gateway started");
    Ok(child)
}

/// Polls the gateway's readiness endpoint (first config applied).
async fn wait_ready(listen: SocketAddr, gateway: &mut Box<dyn ChildWrapper>) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = gateway.try_wait()? {
            bail!("the gateway exited during start-up ({status}); see its log above");
        }
        if http_status(listen, "/readyz").await == Some(200) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the gateway did not become ready on {listen} within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A minimal HTTP/1.0 GET: enough for a readiness probe without an HTTP client.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

async fn stop_gateway(mut gateway: Box<dyn ChildWrapper>) {
    if gateway.try_wait().ok().flatten().is_some() {
        return;
    }
    if let Err(err) = gateway.signal(SIGTERM) {
        warn!(error = %err, "cannot signal the gateway");
    }
    let exited = tokio::time::timeout(STOP_GRACE, gateway.wait()).await;
    if exited.is_err() {
        warn!("the gateway did not stop in time, killing it");
        let _ = Box::into_pin(gateway.kill()).await;
    }
}
