//! Child processes with log files, workspace binaries and minimal HTTP probing.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Lines of log included in startup-failure errors.
pub const STARTUP_LOG_LINES: usize = 30;

/// A child process with its log file (stdout and stderr both go to `log_dir/<name>.log`).
///
/// The child runs in its own process group; [`ChildProcess::kill`] and `Drop` SIGKILL the whole
/// group and reap the child. The child also has `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with the
/// test process.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    pid: u32,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

type SpawnRequest = (Command, mpsc::SyncSender<io::Result<Child>>);

/// All children are forked from one long-lived thread: `PR_SET_PDEATHSIG` fires when the *thread*
/// that forked the child exits, and test threads / tokio blocking threads come and go.
fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so `recv` only fails at process exit.
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the harness spawner thread");
        tx
    })
}

fn spawn_command(cmd: Command) -> io::Result<Child> {
    let (tx, rx) = mpsc::sync_channel(1);
    spawner()
        .send((cmd, tx))
        .map_err(|_| io::Error::other("harness spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("harness spawner thread dropped the request"))?
}

impl ChildProcess {
    /// Spawns `program args...` with stdin from /dev/null and stdout+stderr appended to
    /// `log_dir/<name>.log` (appending, so restarts keep the history).
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<ChildProcess> {
        Self::spawn_with_env(name, program, args, &[], log_dir)
    }

    /// Like [`ChildProcess::spawn`], with extra environment variables for the child.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        log_dir: &Path,
    ) -> anyhow::Result<ChildProcess> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::spawn_command(name, cmd, log_dir)
    }

    /// Spawns a prepared [`Command`] (its stdio, process group and pre-exec hook are overridden).
    pub fn spawn_command(name: &str, mut cmd: Command, log_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("creating log dir {}", log_dir.display()))?;
        let log_path = log_dir.join(format!("{name}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening log file {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .with_context(|| format!("duplicating log file handle {}", log_path.display()))?;
        let program = cmd.get_program().to_owned();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: only async-signal-safe libc calls, no allocation.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = spawn_command(cmd).with_context(|| {
            format!(
                "spawning {name} ({}); log file {}",
                Path::new(&program).display(),
                log_path.display()
            )
        })?;
        let pid = child.id();
        tracing::debug!(name, pid, log = %log_path.display(), "spawned child process");
        Ok(ChildProcess {
            name: name.to_string(),
            child,
            pid,
            log_path,
            status: None,
        })
    }

    /// The name given at spawn time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id (also the process group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Path of the log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The exit status, if the child has been reaped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Whether the child is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Sends `sig` to the child (not its group). No-op if already reaped.
    pub fn signal(&mut self, sig: libc::c_int) -> anyhow::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        // SAFETY: plain syscall; the pid is our unreaped child so it cannot have been reused.
        if unsafe { libc::kill(self.pid as libc::pid_t, sig) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e).with_context(|| {
                    format!("sending signal {sig} to {} (pid {})", self.name, self.pid)
                });
            }
        }
        Ok(())
    }

    fn kill_group(&self) {
        // SAFETY: plain syscall. Only called while the leader is unreaped or right after reaping
        // it, so the group id cannot have been reused.
        unsafe {
            libc::killpg(self.pid as libc::pid_t, libc::SIGKILL);
        }
    }

    /// SIGKILLs the child (and its process group) and waits for it. No-op if already reaped.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        self.kill_group();
        let _ = self.child.kill();
        let status = self.child.wait().with_context(|| {
            format!("waiting for {} (pid {}) after SIGKILL", self.name, self.pid)
        })?;
        self.kill_group();
        self.status = Some(status);
        Ok(())
    }

    /// SIGTERMs the child, waits up to `timeout` for it to exit, then SIGKILLs it. Returns its
    /// exit status (a signal-terminated status if it had to be killed).
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        self.signal(libc::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                self.kill_group();
                return Ok(s);
            }
            if Instant::now() >= deadline {
                tracing::warn!(name = %self.name, pid = self.pid, ?timeout, "child ignored SIGTERM, killing");
                self.kill()?;
                return self.status.with_context(|| {
                    format!(
                        "{} (pid {}) has no exit status after kill",
                        self.name, self.pid
                    )
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Non-blocking check whether the child has exited (reaps it if so).
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let s = self
            .child
            .try_wait()
            .with_context(|| format!("checking whether {} (pid {}) exited", self.name, self.pid))?;
        self.status = s;
        Ok(s)
    }

    /// Waits (polling, without blocking the runtime) up to `timeout` for the child to exit by
    /// itself. Does not kill it on timeout.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {}) did not exit within {timeout:?}; last log lines:\n{}",
                    self.name,
                    self.pid,
                    self.log_tail(STARTUP_LOG_LINES)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The whole log file (lossy UTF-8). On a read error, a description of the error.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// The last `lines` lines of the log file.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// A description for error messages: name, pid, exit status (if exited) and the log tail.
    pub fn describe_failure(&mut self) -> String {
        let state = match self.try_wait() {
            Ok(Some(s)) => format!("exited with {}", describe_status(s)),
            Ok(None) => "still running".to_string(),
            Err(e) => format!("state unknown: {e:#}"),
        };
        format!(
            "{} (pid {}) {state}; log {} (last {STARTUP_LOG_LINES} lines):\n{}",
            self.name,
            self.pid,
            self.log_path.display(),
            self.log_tail(STARTUP_LOG_LINES)
        )
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if self.status.is_none()
            && let Err(e) = self.kill()
        {
            tracing::warn!(name = %self.name, pid = self.pid, "failed to kill child on drop: {e:#}");
        }
    }
}

/// Human-readable exit status ("code 1", "signal 9").
pub fn describe_status(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => format!("{s}"),
    }
}

pub(crate) fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<could not read log {}: {e}>", path.display()),
    }
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Path of a workspace binary (e.g. `"clustermesh-apiserver"`).
///
/// Looks in `$CLUSTERMESH_BIN_DIR` if set, otherwise in `target/<profile>/` derived from the
/// current test executable (`target/<profile>/deps/<test>` → `target/<profile>/`).
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("CLUSTERMESH_BIN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let exe = std::env::current_exe().context("locating the current test executable")?;
            let deps = exe
                .parent()
                .with_context(|| format!("{} has no parent directory", exe.display()))?;
            // Test executables live in target/<profile>/deps; be tolerant of other layouts.
            if deps.file_name() == Some(OsStr::new("deps")) {
                deps.parent()
                    .with_context(|| format!("{} has no parent directory", deps.display()))?
                    .to_path_buf()
            } else {
                deps.to_path_buf()
            }
        }
    };
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "binary {name} not found at {}: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// Opens (creating) a file for appending; used for harness-written notes in log files.
pub(crate) fn append_to_log(path: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".to_string(), script.to_string()]
    }

    fn alive(pid: u32) -> bool {
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }

    #[tokio::test]
    async fn spawn_log_and_exit() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ChildProcess::spawn(
            "echo",
            Path::new("/bin/sh"),
            &sh("echo out; echo err >&2; exit 3"),
            dir.path(),
        )
        .unwrap();
        let s = c.wait_exit(Duration::from_secs(5)).await.unwrap();
        assert_eq!(s.code(), Some(3));
        let log = c.log();
        assert!(log.contains("out") && log.contains("err"), "{log}");
        assert_eq!(c.log_tail(1), "err");
        assert!(c.describe_failure().contains("exit code 3"));
    }

    #[tokio::test]
    async fn log_appends_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..2 {
            let mut c = ChildProcess::spawn(
                "a",
                Path::new("/bin/sh"),
                &sh(&format!("echo run{i}")),
                dir.path(),
            )
            .unwrap();
            c.wait_exit(Duration::from_secs(5)).await.unwrap();
        }
        let log = read_log(&dir.path().join("a.log"));
        assert!(log.contains("run0") && log.contains("run1"), "{log}");
    }

    #[test]
    fn terminate_graceful_and_forced() {
        let dir = tempfile::tempdir().unwrap();
        let mut c =
            ChildProcess::spawn("t", Path::new("/bin/sleep"), &["30".into()], dir.path()).unwrap();
        let s = c.terminate(Duration::from_secs(5)).unwrap();
        assert_eq!(s.signal(), Some(libc::SIGTERM));

        let mut c = ChildProcess::spawn(
            "stubborn",
            Path::new("/bin/sh"),
            &sh("trap '' TERM; echo ready; while :; do sleep 0.05; done"),
            dir.path(),
        )
        .unwrap();
        let t = Instant::now();
        while !c.log().contains("ready") {
            assert!(t.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = c.pid();
        let s = c.terminate(Duration::from_millis(200)).unwrap();
        assert_eq!(s.signal(), Some(libc::SIGKILL));
        assert!(!alive(pid));
    }

    #[test]
    fn kill_takes_down_process_group() {
        let dir = tempfile::tempdir().unwrap();
        // The shell forks a background grandchild and reports its pid.
        let mut c = ChildProcess::spawn(
            "group",
            Path::new("/bin/sh"),
            &sh("sleep 30 & echo grandchild $!; wait"),
            dir.path(),
        )
        .unwrap();
        let t = Instant::now();
        let gpid: u32 = loop {
            if let Some(p) = c
                .log()
                .lines()
                .find_map(|l| l.strip_prefix("grandchild ").map(|p| p.trim().to_string()))
            {
                break p.parse().unwrap();
            }
            assert!(t.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(alive(gpid));
        c.kill().unwrap();
        // The grandchild is reparented and reaped by init/subreaper; give it a moment.
        let t = Instant::now();
        while alive(gpid) {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "grandchild {gpid} survived"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Alive and not a zombie (a reparented zombie may linger if PID 1 does not reap).
    fn running(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    #[test]
    fn child_outlives_spawning_thread() {
        let dir = tempfile::tempdir().unwrap();
        let log_dir = dir.path().to_path_buf();
        let mut c = std::thread::spawn(move || {
            ChildProcess::spawn("t", Path::new("/bin/sleep"), &["30".into()], &log_dir).unwrap()
        })
        .join()
        .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(c.is_running(), "child died with its spawning thread");
        c.kill().unwrap();
        assert!(!alive(c.pid()));
    }

    const PDEATHSIG_ENV: &str = "CLUSTERMESH_HARNESS_PDEATHSIG_DIR";

    /// Helper run in a separate process by `child_dies_with_test_process`.
    #[test]
    fn pdeathsig_helper() {
        if let Some(dir) = std::env::var_os(PDEATHSIG_ENV) {
            let c = ChildProcess::spawn(
                "orphan",
                Path::new("/bin/sleep"),
                &["30".into()],
                Path::new(&dir),
            )
            .unwrap();
            println!("CHILDPID {}", c.pid());
            use std::io::Write;
            std::io::stdout().flush().unwrap();
            // Die without running destructors.
            std::process::abort();
        }
    }

    #[test]
    fn child_dies_with_test_process() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let out = Command::new(exe)
            .args([
                "--exact",
                "process::tests::pdeathsig_helper",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PDEATHSIG_ENV, dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let pid: u32 = stdout
            .lines()
            .find_map(|l| l.split_once("CHILDPID ").map(|(_, p)| p))
            .unwrap_or_else(|| {
                panic!(
                    "helper printed no pid: {stdout} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .trim()
            .parse()
            .unwrap();
        let t = Instant::now();
        while running(pid) {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "child {pid} survived its parent"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn spawn_missing_program_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = ChildProcess::spawn("nope", Path::new("/nonexistent/prog"), &[], dir.path())
            .unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/prog"), "{err:#}");
    }

    #[test]
    fn workspace_bin_missing_message() {
        let err = workspace_bin("definitely-not-a-binary")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cargo build --workspace --bins"), "{err}");
    }
}
