//! The dashboards and alert rules in `grafana/` against a real Prometheus (Debian's
//! `prometheus`, or `$NATTER_PROMETHEUS`): Prometheus scrapes this test's gateways and
//! workers while traffic flows, then every expression of every dashboard panel must return
//! data and every alert rule must evaluate without error. A panel on a metric nobody
//! exports fails here.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use natter_e2e::{
    Client,
    cluster::{free_port, repo_root},
    system,
    system::http_get,
    unique,
};
use serde_json::{Value, json};

struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: std::net::SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_prometheus(target: std::net::SocketAddr) -> Prometheus {
    let binary = std::env::var("NATTER_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let dir = std::env::temp_dir().join(format!(
        "natter-prometheus-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = repo_root().join("grafana/alerts.yml");
    // The repo's scrape config with this test's targets and a 1 s interval.
    let config = format!(
        "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
         rule_files: [\"{}\"]\n\
         scrape_configs:\n\
         - job_name: natter-gateway\n  static_configs: [{{ targets: [\"{target}\"] }}]\n\
         - job_name: natter-workers\n  static_configs: [{{ targets: [\"{target}\"] }}]\n",
        rules.display()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(&binary)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {binary} (apt-get install prometheus): {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "Prometheus did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Prometheus { child, dir, addr }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn query(prometheus: &Prometheus, expr: &str) -> Value {
    let (status, body) = http_get(
        prometheus.addr,
        &format!("/api/v1/query?query={}", percent_encode(expr)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{expr}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Every `expr` of every panel of every dashboard in `grafana/dashboards/`.
fn dashboard_exprs() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let title = format!(
                    "{} / {}",
                    dashboard["title"].as_str().unwrap(),
                    panel["title"].as_str().unwrap()
                );
                exprs.push((title, target["expr"].as_str().unwrap().to_owned()));
            }
        }
    }
    assert!(exprs.len() >= 20, "dashboards missing? {}", exprs.len());
    exprs
}

#[tokio::test]
async fn every_dashboard_panel_and_alert_rule_works_against_a_real_prometheus() {
    let system = system();
    let prometheus = start_prometheus(system.metrics);

    // Traffic the panels can show: one-on-one and group messages, acks and reads (receipts),
    // an error, a 401, a disconnect.
    let (alice, bob) = (unique("alice"), unique("bob"));
    let traffic = tokio::spawn(async move {
        let mut a = Client::connect(0, &alice, "phone", 0).await;
        let mut b = Client::connect(1, &bob, "phone", 0).await;
        a.send_raw("{not json").await;
        let _ = http_get(
            natter_e2e::system().gateways[0],
            "/v1/inbox",
            Some("bad-token"),
        )
        .await;
        Client::connect(0, &unique("carol"), "phone", 0)
            .await
            .close()
            .await;
        // A group too: fanout, group receipt marks and `all` receipts.
        let group = a
            .request(
                serde_json::json!({"type": "group_create", "name": "Observed", "members": [bob]}),
            )
            .await;
        let gid = group["id"].as_str().expect("a group").to_owned();
        for i in 0..400 {
            let text = format!("observed {i}");
            let sent = if i % 4 == 0 {
                a.send_to_group(&gid, &text).await
            } else {
                a.send_text(&bob, &text).await
            };
            let msg = b.wait_for_text(&text).await;
            b.ack(msg["seq"].as_u64().unwrap()).await;
            b.send_json(
                serde_json::json!({"type": "read", "conv": sent["conv"], "up_to": sent["id"]}),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    // Ready (it answers 503 while its storage opens), scrapes arrive, then a few seconds of
    // samples for the rate() windows.
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(prometheus.addr, "/-/ready", None).await.0 != 200 {
        assert!(Instant::now() < deadline, "Prometheus never became ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        let up = query(&prometheus, "sum(up)").await;
        if up["data"]["result"][0]["value"][1] == "2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped both targets: {up}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut missing = Vec::new();
    for (title, expr) in dashboard_exprs() {
        let started = Instant::now();
        loop {
            let answer = query(&prometheus, &expr).await;
            assert_eq!(answer["status"], "success", "{title}: {expr}: {answer}");
            let result = answer["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let has_number = result
                .iter()
                .any(|r| r["value"][1].as_str().is_some_and(|v| v != "NaN"));
            if has_number {
                break;
            }
            if started.elapsed() > Duration::from_secs(20) {
                missing.push(format!("{title}: {expr} → {result:?}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert!(
        missing.is_empty(),
        "panels without data:\n{}",
        missing.join("\n")
    );

    // Every alert rule was loaded and evaluates without error.
    let (status, body) = http_get(prometheus.addr, "/api/v1/rules", None).await;
    assert_eq!(status, 200);
    let rules: Value = serde_json::from_str(&body).unwrap();
    let rules: Vec<Value> = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect();
    let in_file = std::fs::read_to_string(repo_root().join("grafana/alerts.yml"))
        .unwrap()
        .matches("- alert:")
        .count();
    assert_eq!(
        rules.len(),
        in_file,
        "every rule in grafana/alerts.yml is loaded"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    for rule in rules {
        let name = rule["name"].as_str().unwrap().to_owned();
        let answer = query(&prometheus, rule["query"].as_str().unwrap()).await;
        assert_eq!(answer["status"], "success", "{name}: {answer}");
        loop {
            let (_, body) = http_get(prometheus.addr, "/api/v1/rules", None).await;
            let now: Value = serde_json::from_str(&body).unwrap();
            let health = now["data"]["groups"][0]["rules"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == name.as_str())
                .map(|r| r["health"].clone())
                .unwrap_or(json!(null));
            if health == "ok" {
                break;
            }
            assert!(
                Instant::now() < deadline && health != "err",
                "{name}: health {health}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    traffic.abort();
}
