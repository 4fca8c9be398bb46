//! The `switchboard-control` binary's command line (also makes `cargo test`
//! build it for the end-to-end suite).

use std::process::Command;

#[test]
fn serve_fails_clearly_without_a_registry_directory() {
    let output = Command::new(env!("CARGO_BIN_EXE_switchboard-control"))
        .args(["serve", "--registry", "/nonexistent/registry-dir"])
        .args([
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run switchboard-control");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("loading the registry") && stderr.contains("/nonexistent/registry-dir"),
        "{stderr}"
    );
}

#[test]
fn up_without_the_gateway_binary_says_how_to_build_it() {
    // A copy of the binary in a directory without switchboard-gateway.
    let dir = tempfile::tempdir().expect("tempdir");
    let lonely = dir.path().join("switchboard-control");
    std::fs::copy(env!("CARGO_BIN_EXE_switchboard-control"), &lonely).expect("copy binary");
    let output = Command::new(&lonely)
        .args(["up", "--registry", "."])
        .output()
        .expect("run switchboard-control up");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("switchboard-gateway not found"), "{stderr}");
    assert!(stderr.contains("cargo build --release"), "{stderr}");
}
