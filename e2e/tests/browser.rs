//! The browser client (`web/`) works: its protocol and state modules pass their unit
//! tests (`node --test web/test/unit`), and real headless Chromium pages, loading the
//! client from gateway 0 of the shared system and signing in through development sign-in,
//! chat one-on-one and in a group with the right ticks, send an image, and get every
//! message exactly once across going offline and a network drop
//! (`web/test/browser/chat.test.js`, Playwright driving Debian's Chromium).
//!
//! The gateway serves the page's files and nothing else of the folder.
//!
//! Needs Node 20, `npm ci --prefix web` (for `playwright-core`) and `/usr/bin/chromium`;
//! a missing one fails with what to install.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use natter_e2e::{
    http::{Body, request},
    system::{system, web_dir},
};

/// Longest a `node --test` run may take before it is killed and the test fails.
const NODE_RUN_LIMIT: Duration = Duration::from_secs(600);
const CHROMIUM: &str = "/usr/bin/chromium";

/// What a finished `node --test` run printed.
struct NodeRun {
    status: ExitStatus,
    output: String,
    took: Duration,
}

/// Runs `node --test <args>` in `web/` with `env`, killing it after [`NODE_RUN_LIMIT`].
fn node_test(args: &[&str], env: &[(&str, String)]) -> NodeRun {
    let started = Instant::now();
    let mut child = Command::new("node")
        .arg("--test")
        .args(args)
        .current_dir(web_dir())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node must be installed (Debian: apt-get install -y nodejs npm)");
    let stdout = read_in_background(child.stdout.take().unwrap());
    let stderr = read_in_background(child.stderr.take().unwrap());
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for node") {
            break status;
        }
        if started.elapsed() > NODE_RUN_LIMIT {
            child.kill().ok();
            let output = stdout.join().unwrap() + &stderr.join().unwrap();
            panic!("node --test {args:?} still running after {NODE_RUN_LIMIT:?}:\n{output}");
        }
        thread::sleep(Duration::from_millis(100));
    };
    NodeRun {
        status,
        output: stdout.join().unwrap() + &stderr.join().unwrap(),
        took: started.elapsed(),
    }
}

fn read_in_background(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        pipe.read_to_string(&mut text).ok();
        text
    })
}

/// Fails with the whole output unless the run passed; prints node's summary either way.
fn assert_passed(what: &str, run: &NodeRun) {
    assert!(
        run.status.success(),
        "{what} failed ({}) after {:.1?}:\n{}",
        run.status,
        run.took,
        run.output
    );
    let summary: Vec<&str> = run
        .output
        .lines()
        .filter(|l| l.starts_with("# ") || l.starts_with("ok ") || l.starts_with("    ok "))
        .collect();
    println!("{what} passed in {:.1?}:\n{}", run.took, summary.join("\n"));
}

fn web_path(relative: &str) -> PathBuf {
    web_dir().join(relative)
}

#[test]
fn the_web_clients_protocol_and_state_modules_pass_their_unit_tests() {
    let run = node_test(&["test/unit/"], &[]);
    assert_passed("web unit tests", &run);
}

#[test]
fn the_web_client_chats_in_chromium_against_the_real_system() {
    assert!(
        web_path("node_modules/playwright-core").is_dir(),
        "web/node_modules is missing: run `npm ci --prefix web` first"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's Chromium (apt-get install -y chromium)"
    );
    let gateway = system().gateways[0];
    assert!(
        gateway.ip().is_loopback(),
        "the browser only talks to loopback"
    );
    let run = node_test(
        &["--test-concurrency=1", "test/browser/"],
        &[
            ("NATTER_URL", format!("http://{gateway}")),
            ("CHROMIUM", CHROMIUM.to_owned()),
        ],
    );
    assert_passed("browser tests", &run);
    assert!(
        web_path("test-artifacts/chat.png").is_file(),
        "the browser tests save a screenshot of a chat in web/test-artifacts/chat.png"
    );
}

/// Removes a file when dropped (a probe the test put into the web folder).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn the_gateway_serves_the_pages_files_and_nothing_else_of_the_folder() {
    let gateway = system().gateways[0];
    let get = |path: &'static str| request(gateway, "GET", path, &[], Body::None);

    let page = get("/").await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("<html"));
    assert!(
        page.header("content-type")
            .unwrap_or_default()
            .starts_with("text/html")
    );
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));

    let module = get("/src/protocol.js").await;
    assert_eq!(module.status, 200);
    let module_type = module.header("content-type").unwrap_or_default();
    assert!(module_type.contains("javascript"), "{module_type}");
    assert_eq!(
        module.body,
        std::fs::read(web_path("src/protocol.js")).unwrap()
    );
    assert_eq!(get("/style.css").await.status, 200);

    // A hidden file in a served folder, and everything outside what the page loads.
    let probe = RemoveOnDrop(web_path("src/.natter-probe"));
    std::fs::write(&probe.0, "secret").unwrap();
    for path in [
        "/src/.natter-probe",
        "/src/%2enatter-probe",
        "/package.json",
        "/node_modules/playwright-core/package.json",
        "/test/unit/store.test.js",
        "/src/../package.json",
        "/src/%2e%2e/package.json",
        "/%2e%2e/Cargo.toml",
        "/README.md",
    ] {
        let answer = get(path).await;
        assert_eq!(answer.status, 404, "{path} was served");
        assert!(!String::from_utf8_lossy(&answer.body).contains("secret"));
    }
    let unknown_api = get("/v1/no-such-route").await;
    assert_eq!(unknown_api.status, 404);
    assert_eq!(unknown_api.json()["error"], "not_found");
    let post = request(gateway, "POST", "/", &[], Body::Bytes(b"x")).await;
    assert_eq!(post.status, 405);
}
