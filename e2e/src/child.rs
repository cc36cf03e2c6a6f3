//! This test binary run again as a child process, with one of its `#[ignore]`d tests as
//! the entry point (`--exact <entry> --ignored`), so a test can run a gateway or a worker
//! as a real process: kill it by PID, read its memory from /proc. The child is bound to
//! the spawning thread (it dies with the test run) and killed on Drop.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
};

use crate::cluster::spawn_bound;

pub struct TestProcess {
    child: std::process::Child,
}

impl TestProcess {
    /// Starts the ignored test `entry` of this binary with `env`. Its output goes to `log`
    /// when given (appended to by nothing else), else nowhere.
    pub fn start(entry: &str, env: &[(&str, &str)], log: Option<&Path>) -> Self {
        let mut command = Self::command(entry, env);
        match log {
            Some(path) => {
                let file = std::fs::File::create(path).expect("child log");
                command
                    .stdout(file.try_clone().expect("child log"))
                    .stderr(file);
            }
            None => {
                command.stdout(Stdio::null());
            }
        }
        Self {
            child: spawn_bound(&mut command),
        }
    }

    /// Starts `entry` and waits for the first line of its standard output that starts
    /// with `prefix`; returns the process and the rest of that line.
    pub fn start_announcing(entry: &str, env: &[(&str, &str)], prefix: &str) -> (Self, String) {
        let mut command = Self::command(entry, env);
        command.stdout(Stdio::piped());
        let mut child = spawn_bound(&mut command);
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let announced = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix(prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("{entry} never printed {prefix:?}"));
        // Keep draining its output: a child writing to a closed pipe (libtest's "running
        // for over 60 seconds") would die of it.
        std::thread::spawn(move || lines.for_each(drop));
        (Self { child }, announced)
    }

    fn command(entry: &str, env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(std::env::current_exe().expect("the test binary"));
        command.args(["--exact", entry, "--ignored", "--nocapture"]);
        for (name, value) in env {
            command.env(name, value);
        }
        command
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (what an operator's `kill` or a service manager sends to stop a process),
    /// then waits up to `patience` for it to exit; its exit status, `None` if it did not.
    #[allow(unsafe_code)]
    pub fn terminate(&mut self, patience: std::time::Duration) -> Option<std::process::ExitStatus> {
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid");
        // SAFETY: kill(2) only sends a signal; the pid is our own child, not reaped yet.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM not delivered");
        let deadline = std::time::Instant::now() + patience;
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The body of a gateway child process: a gateway on a free loopback port, announced as
/// `listening <addr>` on standard output, with the test secret and `configure`'s changes,
/// run until the process is killed or told to stop (SIGTERM, Ctrl-C: then it shuts down
/// as the real binary does). Returns at once in a plain test run (`urls_var` unset).
pub fn gateway_process(
    urls_var: &str,
    name: &str,
    configure: impl FnOnce(&mut natter_gateway::config::Config),
) {
    let Ok(urls) = std::env::var(urls_var) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free port");
        println!("listening {}", listener.local_addr().expect("an address"));
        let mut config = natter_gateway::config::Config {
            nats: crate::system::nats_settings(&urls, "gateway", name),
            metrics_listen: None,
            ..Default::default()
        };
        config.limits.send_per_sec = 0.0;
        configure(&mut config);
        crate::system::test_settings(&mut config);
        natter_gateway::run(listener, config, natter_fabric::process::shutdown_signal())
            .await
            .expect("gateway");
    });
}

/// Starts the gateway child process whose entry is `entry` (a test calling
/// [`gateway_process`]) and returns it with its address.
pub fn start_gateway(entry: &str, urls_var: &str, urls: &str) -> (TestProcess, SocketAddr) {
    let (process, addr) = TestProcess::start_announcing(entry, &[(urls_var, urls)], "listening ");
    (process, addr.parse().expect("the gateway's address"))
}
