//! The `stdio-shim` subcommand of `switchboard-gateway` (also makes `cargo
//! test` build the binary for the end-to-end suite).

use std::process::{Command, Output};

fn shim(parent: u32, command: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchboard-gateway"))
        .args(["stdio-shim", "--parent", &parent.to_string(), "--"])
        .args(command)
        .output()
        .expect("run the shim")
}

#[test]
fn passes_the_exit_code_and_stdio_through() {
    let output = shim(
        std::process::id(),
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
    );
    assert_eq!(output.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "err\n");
}

#[test]
fn reports_a_command_that_cannot_start() {
    let output = shim(std::process::id(), &["/nonexistent/server"]);
    assert_eq!(output.status.code(), Some(127));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot start `/nonexistent/server`") && stderr.contains("No such file"),
        "{stderr}"
    );
}

#[test]
fn refuses_to_run_when_its_parent_is_already_gone() {
    // pid 1 is never this test's pid: the shim must not start the command.
    let output = shim(1, &["sh", "-c", "echo started"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
}

#[test]
fn mirrors_death_by_signal() {
    use std::os::unix::process::ExitStatusExt;
    let output = shim(std::process::id(), &["sh", "-c", "kill -TERM $$"]);
    assert_eq!(output.status.signal(), Some(15), "{:?}", output.status);
}
