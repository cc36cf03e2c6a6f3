//! A redis-server of the test run's own (Debian's package), on a free loopback port, with
//! nothing saved to disk: a restart comes back empty, like a Redis that lost its memory.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::cluster::{free_port, spawn_bound};

pub struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// kill -9 (by PID).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.child = Some(spawn_bound(&mut command));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {} (apt-get install redis-server)",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Something listens; make sure it is ours (another test process may have taken
        // the port between the probe and this server's bind, and ours then exited).
        std::thread::sleep(Duration::from_millis(50));
        let exited = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        assert!(
            exited.is_none(),
            "redis-server on {} exited ({exited:?}): port taken by another process?",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
