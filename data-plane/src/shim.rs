//! `switchboard-gateway stdio-shim`: a tiny supervisor between the gateway
//! and every stdio server, so no server process outlives its gateway.
//!
//! The gateway starts the shim as a process-group leader; the shim starts
//! the server in that group with the same stdin/stdout/stderr. The shim
//! asks the kernel for SIGTERM when the gateway dies (even by SIGKILL),
//! becomes a child subreaper so orphaned grandchildren are re-parented to
//! it, and on any stop — the gateway's SIGTERM, the gateway's death, or the
//! server exiting — terminates the whole group and every re-parented
//! descendant before exiting with the server's status.

use std::{ffi::OsString, time::Duration};

use nix::{
    errno::Errno,
    sys::{
        prctl,
        signal::{self, SigSet, Signal},
        wait::{WaitPidFlag, WaitStatus, waitpid},
    },
    unistd::{Pid, getpgrp, getpid, getppid, setpgid},
};
use process_wrap::std::{CommandWrap, ResetSigmask};

/// Between SIGTERM and SIGKILL for what is left of the group.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// Exit code when the command cannot be started (as a shell would).
const CANNOT_START: i32 = 127;

/// Runs `command` under supervision; returns the exit code to use (when the
/// server was killed by a signal the shim re-raises it and does not return).
pub fn run(parent: i32, command: OsString, args: Vec<OsString>) -> i32 {
    if !exit_with_parent(parent) {
        return 1;
    }
    // Best effort: without it the shim still stops its group and reaps.
    let _ = prctl::set_child_subreaper(true);
    // The group is what gets stopped; make sure it is our own, not the
    // caller's (the gateway already starts the shim as a group leader).
    if getpgrp() != getpid() && setpgid(Pid::from_raw(0), Pid::from_raw(0)).is_err() {
        eprintln!("switchboard stdio-shim: cannot create a process group");
        return CANNOT_START;
    }

    let mut waited = SigSet::empty();
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        waited.add(sig);
    }
    if let Err(err) = waited.thread_block() {
        eprintln!("switchboard stdio-shim: cannot block signals: {err}");
        return CANNOT_START;
    }

    let mut cmd = std::process::Command::new(&command);
    cmd.args(&args);
    let mut wrapped = CommandWrap::from(cmd);
    // The server must not inherit the shim's blocked signals.
    wrapped.wrap(ResetSigmask);
    let server = match wrapped.spawn() {
        Ok(child) => Pid::from_raw(child.id() as i32),
        Err(err) => {
            eprintln!("cannot start `{}`: {err}", command.to_string_lossy());
            return CANNOT_START;
        }
    };

    loop {
        match waited.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(status) = reap(server) {
                    stop_descendants();
                    return exit_like(status);
                }
            }
            Ok(_) => {
                stop_descendants();
                return reap_blocking(server).map_or(1, exit_like);
            }
            Err(_) => {}
        }
    }
}

/// Asks the kernel for SIGTERM when `parent`, this process's parent, exits
/// (even by SIGKILL). False if it is gone already: it died before the
/// request took hold. Call it from the main thread, before any other.
pub fn exit_with_parent(parent: i32) -> bool {
    // Best effort: a kernel without it still runs everything, unguarded.
    let _ = prctl::set_pdeathsig(Signal::SIGTERM);
    getppid().as_raw() == parent
}

/// Reaps every exited child; returns the server's status once it is gone.
fn reap(server: Pid) -> Option<WaitStatus> {
    let mut server_status = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return server_status,
            Ok(status) if status.pid() == Some(server) => server_status = Some(status),
            Ok(_) => {}
        }
    }
}

/// Waits for the server after everything was told to stop.
fn reap_blocking(server: Pid) -> Option<WaitStatus> {
    loop {
        match waitpid(server, None) {
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                return Some(status);
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return None,
        }
    }
}

/// SIGTERM to the group and to re-parented descendants, then SIGKILL to
/// whatever is still there after the grace period.
fn stop_descendants() {
    signal_all(Signal::SIGTERM);
    let deadline = std::time::Instant::now() + TERM_GRACE;
    while std::time::Instant::now() < deadline {
        if !has_children() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_all(Signal::SIGKILL);
    while has_children() {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal_all(sig: Signal) {
    // The shim's own copy of the signal stays blocked and is ignored.
    let _ = signal::killpg(getpgrp(), sig);
    for pid in children_of(getpid()) {
        let _ = signal::kill(pid, sig);
    }
}

/// Reaps what exited; true while any child (including adopted ones) remains.
fn has_children() -> bool {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => return true,
            Err(Errno::ECHILD) => return false,
            Err(_) => return true,
            Ok(_) => {}
        }
    }
}

/// Direct children by `/proc/<pid>/stat` (field 4 is the parent pid).
fn children_of(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    // The command name may contain spaces: parse after its ')'.
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent.as_raw())
        })
        .map(Pid::from_raw)
        .collect()
}

/// Exit the way the server did: same code, or the same signal.
fn exit_like(status: WaitStatus) -> i32 {
    match status {
        WaitStatus::Exited(_, code) => code,
        WaitStatus::Signaled(_, sig, _) => {
            let mut set = SigSet::empty();
            set.add(sig);
            let _ = set.thread_unblock();
            let _ = signal::kill(getpid(), sig);
            128 + sig as i32
        }
        _ => 1,
    }
}
