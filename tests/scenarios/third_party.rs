//! A real third-party MCP server behind the gateway: `mcp-server-time`
//! from PyPI (installed by `.ci/test` into `.ci/venv`), configured by the
//! template users copy.

use e2e::{Switchboard, call, connect, tool_names};
use serde_json::{Value, json};

#[tokio::test]
async fn mcp_server_time_from_pypi() {
    e2e::require_python_module("mcp_server_time", "mcp-server-time");
    // The template as users copy it, but with the tests' Python (the venv's).
    let template = include_str!("../../templates/mcpservers/time.yaml");
    let python = serde_json::to_string(&e2e::python()).expect("the path is UTF-8");
    let yaml = template.replace("command: python3", &format!("command: {python}"));
    assert_ne!(yaml, template, "time.yaml no longer runs `python3`");
    let sb = Switchboard::start(&[("time.yaml", &yaml)]).await;
    let state = sb.wait_server_state("time", "ready").await;
    assert!(state["tools"].as_u64().unwrap_or(0) >= 2, "{state}");
    let client = connect(&sb.mcp_url()).await.expect("connect");
    let names = tool_names(&client).await.expect("list");
    assert!(
        names.contains(&"time.get_current_time".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"time.convert_time".to_owned()), "{names:?}");

    let result = call(
        &client,
        "time.get_current_time",
        json!({ "timezone": "UTC" }),
    )
    .await
    .expect("get_current_time");
    assert_ne!(result.is_error, Some(true), "{result:?}");
    let text = result.content[0]
        .as_text()
        .map(|t| t.text.clone())
        .expect("text content");
    let body: Value = serde_json::from_str(&text).expect("JSON body");
    assert_eq!(body["timezone"], "UTC", "{body}");
    assert!(
        body["datetime"].as_str().is_some_and(|d| d.len() >= 19),
        "{body}"
    );
    client.cancel().await.expect("close");
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success(), "openssl {args:?}");
}

/// A test CA and a `localhost`/`127.0.0.1` server certificate it signed.
fn test_certificates(dir: &std::path::Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=switchboard e2e CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    );
}

/// An https server (the Python SDK's MCPServer behind uvicorn with TLS):
/// reached when the gateway trusts its CA (`SSL_CERT_FILE`), refused with
/// a certificate error when it does not.
#[tokio::test]
async fn https_server_is_verified_against_the_trusted_roots() {
    let certs = tempfile::tempdir().expect("temp dir");
    test_certificates(certs.path());
    let port = e2e::free_addr().port().to_string();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/tls_server.py");
    e2e::require_python_module("mcp", "mcp");
    let _server = tokio::process::Command::new(e2e::python())
        .arg(&script)
        .arg(&port)
        .arg(certs.path().join("leaf.pem"))
        .arg(certs.path().join("leaf.key"))
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the TLS server");
    let yaml = json!({
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "McpServer",
        "metadata": { "name": "secure" },
        "spec": { "transport": { "http": { "url": format!("https://localhost:{port}/mcp") } } },
    })
    .to_string();

    let mut sb = Switchboard::unstarted();
    let ca = certs.path().join("ca.pem").display().to_string();
    sb.gateway_env.push(("SSL_CERT_FILE".to_owned(), ca));
    sb.write_file("secure.yaml", &yaml);
    sb.start_control_plane().await;
    sb.start_gateway().await;
    sb.wait_gateway_ready().await;
    sb.wait_server_state("secure", "ready").await;
    let client = connect(&sb.mcp_url()).await.expect("connect");
    let result = call(&client, "secure.whoami", json!({}))
        .await
        .expect("call over https");
    assert_eq!(e2e::text(&result), "served over TLS", "{result:?}");
    client.cancel().await.expect("close");

    // Without the CA among its roots, the gateway refuses the certificate.
    let untrusting = Switchboard::start(&[("secure.yaml", &yaml)]).await;
    let failed = untrusting.wait_server_state("secure", "failed").await;
    let reason = failed["reason"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        reason.contains("certificate") || reason.contains("unknownissuer"),
        "{failed}"
    );
}
