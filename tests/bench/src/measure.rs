//! What the harness measures and how: latency samples with their errors,
//! and the CPU time and memory of processes (this one from `getrusage`,
//! others from `/proc`).

use std::{fmt::Display, time::Duration};

use e2e::{Process, Switchboard};

/// Latencies and errors of one target at one point, the CPU time its
/// processes spent on them, and the driver's own.
#[derive(Default, Clone)]
pub struct Sample {
    pub micros: Vec<u32>,
    pub errors: u64,
    /// The first error's message, for the log.
    pub first_error: Option<String>,
    pub elapsed: Duration,
    pub cpu: Cpu,
    /// CPU time of the whole bench process (every thread) over the
    /// measured window: the load driver, and whatever else of the harness
    /// ran meanwhile (nothing but idle tasks during a measurement).
    pub driver_cpu: OwnCpu,
}

/// User and system CPU time of this process, every thread.
#[derive(Default, Clone, Copy)]
pub struct OwnCpu {
    pub user: Duration,
    /// In the kernel: for a load driver mostly loopback TCP (or pipe)
    /// sends and receives, which any client pays.
    pub system: Duration,
}

/// CPU time (user + system, all threads) of the processes behind a target.
#[derive(Default, Clone, Copy)]
pub struct Cpu {
    /// The MCP server: over HTTP (ceiling), behind the gateway (with its
    /// stdio shim) or spoken to directly (floor).
    pub server: Duration,
    pub gateway: Duration,
    pub control_plane: Duration,
}

// === impl Sample ===

impl Sample {
    /// A sample of one error and nothing else.
    pub fn failed(err: impl Display) -> Self {
        let mut sample = Self::default();
        sample.fail(err);
        sample
    }

    /// One answered call: its latency when it was right, an error otherwise.
    pub fn record<E: Display>(&mut self, took: Duration, outcome: Result<(), E>) {
        match outcome {
            Ok(()) => self
                .micros
                .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX)),
            Err(err) => self.fail(err),
        }
    }

    pub fn fail(&mut self, err: impl Display) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(err.to_string());
        }
    }

    pub fn merge(&mut self, other: Sample) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.elapsed += other.elapsed;
        self.cpu = self.cpu + other.cpu;
        self.driver_cpu = self.driver_cpu + other.driver_cpu;
    }

    pub fn rps(&self) -> f64 {
        self.micros.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Microseconds of `spent` per answered call.
    pub fn per_call_us(&self, spent: Duration) -> f64 {
        spent.as_secs_f64() * 1e6 / (self.micros.len() as f64).max(1.0)
    }

    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.micros.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        let index = ((sorted.len() - 1) as f64 * q).round() as usize;
        f64::from(sorted[index]) / 1000.0
    }
}

// === impl Cpu ===

impl std::ops::Add for Cpu {
    type Output = Cpu;

    fn add(self, other: Cpu) -> Cpu {
        Cpu {
            server: self.server + other.server,
            gateway: self.gateway + other.gateway,
            control_plane: self.control_plane + other.control_plane,
        }
    }
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;

    fn sub(self, earlier: Cpu) -> Cpu {
        Cpu {
            server: self.server.saturating_sub(earlier.server),
            gateway: self.gateway.saturating_sub(earlier.gateway),
            control_plane: self.control_plane.saturating_sub(earlier.control_plane),
        }
    }
}

// === impl OwnCpu ===

impl OwnCpu {
    /// This whole process so far, to the microsecond
    /// (`getrusage(RUSAGE_SELF)`); zero if the call fails.
    pub fn now() -> Self {
        use nix::sys::{
            resource::{UsageWho, getrusage},
            time::{TimeVal, TimeValLike},
        };
        let duration =
            |t: TimeVal| Duration::from_micros(u64::try_from(t.num_microseconds()).unwrap_or(0));
        getrusage(UsageWho::RUSAGE_SELF).map_or(Self::default(), |usage| Self {
            user: duration(usage.user_time()),
            system: duration(usage.system_time()),
        })
    }

    /// The time spent since `earlier`.
    pub fn since(earlier: Self) -> Self {
        let now = Self::now();
        Self {
            user: now.user.saturating_sub(earlier.user),
            system: now.system.saturating_sub(earlier.system),
        }
    }

    pub fn total(self) -> Duration {
        self.user + self.system
    }
}

impl std::ops::Add for OwnCpu {
    type Output = OwnCpu;

    fn add(self, other: OwnCpu) -> OwnCpu {
        OwnCpu {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }
}

/// `None` once the gateway is gone (pid 0 would stand for the whole
/// machine in `descendants`).
pub fn gateway_pid(sb: &Switchboard) -> Option<u32> {
    sb.gateway.as_ref().and_then(Process::pid)
}

/// User + system CPU time of a process and all its threads so far; zero
/// for a process that is gone.
pub fn cpu_time(pid: Option<u32>) -> Duration {
    // `/proc` counts in USER_HZ, which Linux fixes at 100 per second.
    const TICK: Duration = Duration::from_millis(10);
    let ticks = pid.and_then(|pid| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name: state is the 3rd, utime the 14th.
        let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace().skip(11);
        let user: u32 = fields.next()?.parse().ok()?;
        let system: u32 = fields.next()?.parse().ok()?;
        Some(user + system)
    });
    TICK * ticks.unwrap_or(0)
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Every process below `pid`.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let ppid = stat[stat.rfind(')')? + 1..]
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}
