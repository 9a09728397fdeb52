//! One server process of a fixture (a [`super::Server`] or a [`super::cluster::Cluster`] member):
//! spawned with its output appended to a log file, waited on until `/health` says healthy, stopped
//! with SIGTERM, SIGKILLed on drop; the fixtures' timing and log constants live here, once.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// How long a spawned process gets to answer `GET /health` with `"health":"true"`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Process::stop`] waits for an exit after SIGTERM before it kills the process.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two looks at a condition the fixtures wait for.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How many times a fixture starts over with new ports when one was taken before it was bound.
pub const SPAWN_ATTEMPTS: usize = 3;
/// Lines of a process's log shown when a test fails.
pub const LOG_TAIL_LINES: usize = 100;

/// A server process, or the slot for one between runs. `label` ("server", "member 2") names it in
/// failure messages.
pub struct Process {
    label: String,
    bin: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    starts: usize,
    /// The working directory it runs in; the test's own when `None`.
    current_dir: Option<PathBuf>,
}

impl Process {
    /// A process slot for `bin` logging to `log_path`; nothing runs until [`Process::spawn`].
    pub fn new(label: &str, bin: PathBuf, log_path: PathBuf) -> Process {
        Process {
            label: label.to_string(),
            bin,
            log_path,
            child: None,
            starts: 0,
            current_dir: None,
        }
    }

    /// Runs the process in `dir` (where relative paths such as etcd's `unix://host:port`
    /// socket names land) from the next spawn on.
    pub fn set_current_dir(&mut self, dir: &Path) {
        self.current_dir = Some(dir.to_path_buf());
    }

    /// Starts the binary with `args` and without the test environment's `ETCD_*` variables,
    /// appending its stdout and stderr to the log after a `=== fixture: start #<n>: ...` line.
    pub fn spawn(&mut self, args: &[String]) {
        self.spawn_with_env(args, &[]);
    }

    /// Like [`Process::spawn`], with exactly the given `ETCD_*` variables (`env`) set.
    pub fn spawn_with_env(&mut self, args: &[String], env: &[(&str, String)]) {
        assert!(
            self.child.is_none(),
            "spawn: {} is already running",
            self.label
        );
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("opening the log file in our temp dir should work");
        writeln!(
            log,
            "=== fixture: start #{}: {}",
            self.starts,
            command_line(&self.bin, args)
        )
        .expect("writing the log file should work");
        let stderr = log.try_clone().expect("cloning a file handle should work");
        let mut command = Command::new(&self.bin);
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(name);
            }
        }
        let child = command
            .args(args)
            .envs(env.iter().map(|(name, value)| (*name, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap_or_else(|err| panic!("cannot spawn {}: {err}", self.bin.display()));
        self.child = Some(child);
    }

    /// Waits until `GET /health` on `client_port` says healthy; an error if the process exits first
    /// or `deadline` passes.
    pub fn wait_healthy(&mut self, client_port: u16, deadline: Instant) -> Result<(), String> {
        self.wait_healthy_at(client_port, "/health", deadline)
    }

    /// Like [`Process::wait_healthy`], asking `health_path` (e.g. `/health?exclude=NOSPACE`).
    pub fn wait_healthy_at(
        &mut self,
        client_port: u16,
        health_path: &str,
        deadline: Instant,
    ) -> Result<(), String> {
        loop {
            if !self.is_spawned() {
                return Err(format!("{} is not running", self.label));
            }
            if let Some(status) = self.exited() {
                return Err(format!(
                    "{} exited before becoming healthy: {status}",
                    self.label
                ));
            }
            if super::http::is_healthy_at(client_port, health_path) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{} not healthy in time", self.label));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// True while the process runs (one that exited stays spawned until [`Process::exited`]).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .expect("waiting on our child should work")
                .is_none(),
            None => false,
        }
    }

    /// The exit status if the process has exited, reaping it; `None` while it runs or if none was
    /// spawned.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self
            .child
            .as_mut()?
            .try_wait()
            .expect("waiting on our child should work")?;
        self.child = None;
        Some(status)
    }

    /// Whether a process is spawned and not yet reaped (it may have exited meanwhile).
    pub fn is_spawned(&self) -> bool {
        self.child.is_some()
    }

    /// OS process id, while spawned.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, then reap; panics if nothing runs.
    pub fn kill9(&mut self) {
        let Some(mut child) = self.child.take() else {
            panic!("kill9: {} is not running", self.label);
        };
        child.kill().expect("SIGKILL to our own child should work");
        child.wait().expect("waiting on a killed child should work");
    }

    /// SIGKILL and reap if running; nothing otherwise.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to the process; panics if nothing runs.
    pub fn signal(&self, signal: Signal) {
        let Some(child) = self.child.as_ref() else {
            panic!("signal: {} is not running", self.label);
        };
        // Not yet reaped, so the pid cannot name another process.
        kill_process(Pid::from_child(child), signal)
            .unwrap_or_else(|err| panic!("{signal:?} to our own child should work: {err}"));
    }

    /// SIGTERM, then waits for the exit; after [`STOP_TIMEOUT`] the process is killed and the
    /// error says so. Panics if nothing runs.
    pub fn stop(&mut self) -> Result<ExitStatus, String> {
        self.signal(Signal::TERM);
        self.wait_exit(STOP_TIMEOUT).map_err(|_| {
            self.kill();
            format!(
                "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM",
                self.label
            )
        })
    }

    /// Waits up to `timeout` for the process to exit by itself and reaps it; an error (the process
    /// left running) after that.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        assert!(
            self.is_spawned(),
            "wait_exit: {} is not running",
            self.label
        );
        loop {
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(format!("{} still running after {timeout:?}", self.label));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process printed so far (all runs, a start line before each).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last [`LOG_TAIL_LINES`] lines of the log.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    /// The tail of the log under a header naming `what` and the log file, for a failure report.
    pub fn log_report(&self, what: &str) -> String {
        format!(
            "--- {what} log {} (last {LOG_TAIL_LINES} lines; {}) ---\n{}",
            self.log_path.display(),
            self.process_state(),
            self.log_tail()
        )
    }

    /// What the kernel says of the process now, for a failure report: a member that died
    /// without a word in its log shows up as exited rather than as a silent log.
    fn process_state(&self) -> String {
        let Some(pid) = self.pid() else {
            return "not started".to_owned();
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state is the field after the parenthesised command name.
        match stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
        {
            Some('Z') => format!("pid {pid} has exited, not yet reaped"),
            Some('T') => format!("pid {pid} is stopped"),
            Some(state) => format!("pid {pid} is running, state {state}"),
            None => format!("pid {pid} is gone"),
        }
    }

    /// Whether a start failed because a port was taken between `free_port()` and bind.
    pub fn port_clash(&self) -> bool {
        self.log()
            .to_ascii_lowercase()
            .contains("address already in use")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `bin` and `args` as one line, for logs and failure messages.
pub fn command_line(bin: &Path, args: &[String]) -> String {
    let mut line = bin.display().to_string();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}
