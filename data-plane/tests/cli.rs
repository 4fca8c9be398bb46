//! Command-line errors of `switchboard-gateway run`: bad telemetry flags
//! are refused at start with a message naming the flag or value.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard-gateway"))
        .arg("run")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run the gateway");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_sample_ratio_outside_zero_to_one_is_refused() {
    let (code, stderr) = run(&["--trace-sample-ratio", "1.5"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--trace-sample-ratio"), "{stderr}");
    assert!(stderr.contains("not a number from 0 to 1"), "{stderr}");
}

#[test]
fn an_invalid_otlp_endpoint_is_refused() {
    let (code, stderr) = run(&["--otlp-endpoint", "not a url"]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("invalid OTLP endpoint `not a url`"),
        "{stderr}"
    );
}

#[test]
fn an_unknown_log_format_is_refused() {
    let (code, stderr) = run(&["--log-format", "xml"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("logfmt") && stderr.contains("json"),
        "{stderr}"
    );
}
