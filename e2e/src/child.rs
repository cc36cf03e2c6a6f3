//! This test binary run again as a child process, with one of its `#[ignore]`d tests as
//! the entry point (`--exact <entry> --ignored`), so a test can run a gateway or a worker
//! as a real process: kill it by PID, read its memory from /proc. The child is bound to
//! the spawning thread (it dies with the test run) and killed on Drop.

use std::{
    io::{BufRead, BufReader},
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
        let announced = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix(prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("{entry} never printed {prefix:?}"));
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
