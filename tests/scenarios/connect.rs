//! `switchboard-control connect`: every client's snippet parses with a
//! real parser of its format, names the caller, and carries the token
//! reference only when asked; and real clients reach the gateway with
//! what the snippets say: the Python MCP SDK over the URL a URL client
//! gets, and through the bridge command a command-only client gets, each
//! seen under its caller in the gateway's log.

use e2e::{Switchboard, bin_dir, eventually, everything_server_yaml};
use serde_json::{Value, json};

use crate::relay::{assert_python_saw_the_gateway, python_sdk};

async fn connect(args: &[&str]) -> String {
    let output = tokio::process::Command::new(bin_dir().join("switchboard-control"))
        .arg("connect")
        .args(args)
        .env("USER", "tester")
        .output()
        .await
        .expect("running switchboard-control connect");
    assert!(
        output.status.success(),
        "connect {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `text` as JSON, read by Python's own parser for `format` (`json`, or
/// `tomllib` for TOML).
fn parsed(format: &str, text: &str) -> Value {
    let reader = match format {
        "toml" => "import sys, json, tomllib; print(json.dumps(tomllib.loads(sys.stdin.read())))",
        _ => "import sys, json; print(json.dumps(json.loads(sys.stdin.read())))",
    };
    let output = e2e::python_with_input(reader, text.as_bytes());
    assert!(
        output.status.success(),
        "not {format}: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON from python")
}

#[tokio::test]
async fn every_clients_snippet_parses_and_names_its_caller() {
    let listed = connect(&["--list"]).await;
    let clients: Vec<(String, String)> = listed
        .lines()
        .filter_map(|line| {
            let (name, path) = line.split_once(' ')?;
            Some((name.to_owned(), path.trim().to_owned()))
        })
        .collect();
    assert_eq!(clients.len(), 9, "{listed}");
    for (client, path) in &clients {
        let format = if path.ends_with(".toml") {
            "toml"
        } else {
            "json"
        };
        let open = parsed(format, &connect(&[client]).await);
        let text = open.to_string();
        assert!(
            text.contains(&format!("{client}-tester")),
            "{client}: {text}"
        );
        assert!(!text.contains("SWITCHBOARD_TOKEN"), "{client}: {text}");
        let closed = parsed(
            format,
            &connect(&[client, "--token-file", "/home/tester/.switchboard-token"]).await,
        );
        assert!(
            closed.to_string().contains("SWITCHBOARD_TOKEN"),
            "{client}: {closed}"
        );
    }
    // Each where its client reads it.
    let codex = parsed("toml", &connect(&["codex", "--caller", "ci"]).await);
    assert_eq!(
        codex["mcp_servers"]["switchboard"]["url"],
        "http://127.0.0.1:8787/mcp?caller=ci"
    );
    let opencode = parsed("json", &connect(&["opencode"]).await);
    assert_eq!(opencode["$schema"], "https://opencode.ai/config.json");
    assert_eq!(opencode["mcp"]["switchboard"]["type"], "remote");
    let vscode = parsed("json", &connect(&["vscode", "--name", "team-tools"]).await);
    assert_eq!(vscode["servers"]["team-tools"]["type"], "http");

    // Servers a client keeps to itself sit beside the gateway's entry,
    // from flags or from a file of them.
    let local =
        r#"fs={"command":"npx","args":["-y","@modelcontextprotocol/server-filesystem","/work"]}"#;
    let codex = parsed("toml", &connect(&["codex", "--local", local]).await);
    assert_eq!(codex["mcp_servers"]["fs"]["command"], "npx");
    assert!(codex["mcp_servers"]["switchboard"]["url"].is_string());
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("cursor.json");
    std::fs::write(
        &file,
        r#"{"notes": {"command": "notes-mcp", "env": {"NOTES": "~/notes"}}}"#,
    )
    .expect("write");
    let cursor = parsed(
        "json",
        &connect(&["cursor", "--local-file", &file.display().to_string()]).await,
    );
    assert_eq!(cursor["mcpServers"]["notes"]["env"]["NOTES"], "~/notes");
    assert!(cursor["mcpServers"]["switchboard"]["url"].is_string());
}

/// Whether `config` type-checks as OpenCode's `Config`, the type OpenCode
/// publishes (`@opencode-ai/sdk`, generated from the schema its `$schema`
/// names), with the TypeScript compiler in strict mode: an unknown key, a
/// missing one or a wrong type is an error. The compiler's complaint if not.
fn opencode_accepts(config: &Value) -> Result<(), String> {
    const NPM_CI: &str = "`npm ci --prefix tests/npm`";
    let npm = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("npm");
    let node = e2e::require_tool(
        "Node (npm package node)",
        npm.join("node_modules/.bin/node"),
        NPM_CI,
    );
    let tsc = e2e::require_tool(
        "the TypeScript compiler (npm package typescript)",
        npm.join("node_modules/typescript/bin/tsc"),
        NPM_CI,
    );
    // Beside node_modules, where the compiler resolves the package.
    let dir = tempfile::Builder::new()
        .prefix("opencode-check")
        .tempdir_in(&npm)
        .expect("a scratch directory");
    let file = dir.path().join("config.mts");
    let source = format!(
        "import type {{ Config }} from \"@opencode-ai/sdk/v2/types\";\nexport const config: Config = {config};\n"
    );
    std::fs::write(&file, source).expect("write the check");
    let output = std::process::Command::new(node)
        .arg(tsc)
        .args([
            "--noEmit",
            "--strict",
            "--skipLibCheck",
            "--module",
            "nodenext",
            "--moduleResolution",
            "nodenext",
            "--target",
            "es2022",
        ])
        .arg(&file)
        .output()
        .expect("running tsc");
    match output.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&output.stdout).into_owned()),
    }
}

#[tokio::test]
async fn the_opencode_snippet_is_a_config_opencode_accepts() {
    for args in [
        &["opencode"][..],
        &[
            "opencode",
            "--token-file",
            "/home/tester/.switchboard-token",
        ],
        // A local server as OpenCode writes one.
        &[
            "opencode",
            "--local",
            r#"fs={"type":"local","command":["npx","-y","fs-mcp"]}"#,
        ],
    ] {
        let snippet = parsed("json", &connect(args).await);
        opencode_accepts(&snippet).unwrap_or_else(|e| panic!("{args:?}: {e}\n{snippet}"));
    }
    // The check is strict: what OpenCode would refuse, it refuses.
    for refused in [
        json!({ "mcp": { "x": { "type": "remote" } } }),
        json!({ "mcp": { "x": { "type": "remote", "url": "http://h/mcp", "header": {} } } }),
        json!({ "mcp": { "x": { "type": "local", "command": "npx" } } }),
    ] {
        assert!(opencode_accepts(&refused).is_err(), "accepted {refused}");
    }
}

#[tokio::test]
async fn real_clients_reach_the_gateway_the_way_their_snippets_say() {
    let sb = Switchboard::start(&[(
        "everything.yaml",
        &everything_server_yaml("everything", json!({})),
    )])
    .await;
    sb.wait_server_state("everything", "ready").await;
    let url = sb.mcp_url();

    // A URL client: the SDK over the snippet's URL.
    let cursor = parsed("json", &connect(&["cursor", "--url", &url]).await);
    let snippet_url = cursor["mcpServers"]["switchboard"]["url"]
        .as_str()
        .expect("a URL")
        .to_owned();
    assert_python_saw_the_gateway(&python_sdk(&["http", &snippet_url]).await);

    // A command-only client: the SDK starts the snippet's command.
    let desktop = parsed("json", &connect(&["claude-desktop", "--url", &url]).await);
    let entry = &desktop["mcpServers"]["switchboard"];
    let mut command = vec![
        "stdio".to_owned(),
        entry["command"].as_str().expect("command").to_owned(),
    ];
    command.extend(
        entry["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned)),
    );
    let command: Vec<&str> = command.iter().map(String::as_str).collect();
    assert_python_saw_the_gateway(&python_sdk(&command).await);

    for caller in ["cursor-tester", "claude-desktop-tester"] {
        sb.wait_traces(&format!("caller={caller}")).await;
        eventually(
            &format!("{caller} in the request log"),
            e2e::EVENTUALLY,
            || async {
                let logs = sb.logs();
                logs.lines()
                    .any(|l| {
                        l.contains("message=request") && l.contains(&format!("caller={caller}"))
                    })
                    .then_some(())
                    .ok_or("not yet".to_owned())
            },
        )
        .await;
    }
}

/// `--write` into realistic existing files: the rest stays byte for byte,
/// a backup comes first, `--dry-run` shows the diff and writes nothing, a
/// second run changes nothing, and a file that does not parse is left
/// alone with the line that is wrong.
#[tokio::test]
async fn write_merges_into_existing_configs_and_changes_nothing_else() {
    let dir = tempfile::tempdir().expect("dir");
    let run = |args: Vec<String>| async move {
        let output = tokio::process::Command::new(bin_dir().join("switchboard-control"))
            .arg("connect")
            .args(&args)
            .env("USER", "tester")
            .output()
            .await
            .expect("connect");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let backups = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .expect("dir")
            .filter(|e| {
                e.as_ref().is_ok_and(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .contains("switchboard-backup")
                })
            })
            .count()
    };

    // VS Code's mcp.json is JSONC: comments and other servers stay.
    let vscode = dir.path().join("mcp.json");
    let original = "{\n  // team servers\n  \"servers\": {\n    \"github\": { \"type\": \"http\", \"url\": \"https://api.githubcopilot.com/mcp/\" }, // keep\n  },\n  \"inputs\": []\n}\n";
    std::fs::write(&vscode, original).expect("write");
    let config = vscode.display().to_string();
    let args = |extra: &[&str]| {
        let mut args: Vec<String> = ["vscode", "--write", "--config", &config]
            .iter()
            .map(|a| (*a).to_owned())
            .collect();
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        args
    };
    let (code, diff, _) = run(args(&["--dry-run"])).await;
    assert_eq!(code, Some(0));
    assert!(
        diff.contains("+") && diff.contains("caller=vscode-tester"),
        "{diff}"
    );
    assert_eq!(
        std::fs::read_to_string(&vscode).expect("read"),
        original,
        "dry run"
    );
    let (code, said, _) = run(args(&[])).await;
    assert_eq!(code, Some(0), "{said}");
    let merged = std::fs::read_to_string(&vscode).expect("read");
    for line in original.lines().filter(|l| !l.trim().starts_with('}')) {
        assert!(merged.contains(line), "`{line}` kept:\n{merged}");
    }
    assert!(merged.contains("\"switchboard\""), "{merged}");
    assert_eq!(backups(dir.path()), 1);
    let (code, said, _) = run(args(&[])).await;
    assert_eq!(code, Some(0));
    assert!(said.contains("nothing changed"), "{said}");
    assert_eq!(std::fs::read_to_string(&vscode).expect("read"), merged);
    assert_eq!(backups(dir.path()), 1, "no backup when nothing changes");

    // Codex's TOML: the rest byte for byte, and TOML a parser reads.
    let codex = dir.path().join("config.toml");
    let original = "# my codex\nmodel = \"o4-mini\"\n\n[mcp_servers.git]\ncommand = \"uvx\" # local\nargs = [\"mcp-server-git\"]\n";
    std::fs::write(&codex, original).expect("write");
    let config = codex.display().to_string();
    let (code, _, stderr) = run(vec![
        "codex".into(),
        "--write".into(),
        "--config".into(),
        config.clone(),
    ])
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let merged = std::fs::read_to_string(&codex).expect("read");
    assert!(merged.starts_with(original), "{merged}");
    let read = parsed("toml", &merged);
    assert_eq!(read["mcp_servers"]["git"]["command"], "uvx");
    assert_eq!(
        read["mcp_servers"]["switchboard"]["url"],
        "http://127.0.0.1:8787/mcp?caller=codex-tester"
    );

    // A broken file: untouched, no backup, the line named.
    let broken = dir.path().join("broken.json");
    let text = "{\n  \"mcpServers\": {\n    \"a\": ,\n  }\n}\n";
    std::fs::write(&broken, text).expect("write");
    let before = backups(dir.path());
    let (code, _, stderr) = run(vec![
        "cursor".into(),
        "--write".into(),
        "--config".into(),
        broken.display().to_string(),
    ])
    .await;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("broken.json") && stderr.contains("line 3"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&broken).expect("read"), text);
    assert_eq!(backups(dir.path()), before);
}
