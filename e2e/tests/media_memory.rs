//! Uploading a 200 MiB file keeps the gateway's memory bounded: the file streams through
//! in chunks and is never held whole. The gateway runs as a child process (this test
//! binary again, `gateway_process` below) so its peak resident memory (`VmHWM`) can be
//! read from /proc. Prints upload and download throughput.

use std::{net::SocketAddr, time::Instant};

use natter_e2e::{
    child::{self, TestProcess},
    client::token,
    http::{Body, request},
    system::{self, Options, configure, wait_healthy},
    test_file,
};
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;
const FILE_MIB: usize = 200;
const URLS_VAR: &str = "NATTER_E2E_GATEWAY_URLS";

/// Runs a gateway until killed, when started by the test below.
#[test]
#[ignore = "a child process of the memory test, not a test"]
fn gateway_process() {
    child::gateway_process(URLS_VAR, "memory-gateway", |config| {
        config.media.max_bytes = 2 * (FILE_MIB * MIB) as u64;
    });
}

struct Gateway {
    process: TestProcess,
    addr: SocketAddr,
}

impl Gateway {
    fn start(urls: &str) -> Self {
        let (process, addr) = child::start_gateway("gateway_process", URLS_VAR, urls);
        Self { process, addr }
    }

    /// A `/proc/<pid>/status` figure in MiB (`VmRSS`: now, `VmHWM`: peak).
    fn memory_mib(&self, field: &str) -> f64 {
        natter_e2e::memory_mib(self.process.pid(), field)
    }
}

#[tokio::test]
async fn uploading_200_mib_keeps_the_gateway_memory_bounded() {
    configure(Options {
        workers: 0,
        ..Options::default()
    });
    let gateway = Gateway::start(&system::system().nats_urls);
    wait_healthy(gateway.addr).await;
    let idle = gateway.memory_mib("VmRSS:");

    // 200 MiB generated a MiB at a time, hashed as it goes: the test holds no copy.
    let mut hasher = Sha256::new();
    let mut sent = 0;
    let mut next = || {
        (sent < FILE_MIB).then(|| {
            let head: &[u8] = if sent == 0 {
                b"\0\0\0\x18ftypmp42"
            } else {
                b""
            };
            let chunk = test_file(head, MIB, sent as u64 + 1);
            hasher.update(&chunk);
            sent += 1;
            chunk
        })
    };
    let auth = format!("Bearer {}", token("uploader"));
    let started = Instant::now();
    let uploaded = request(
        gateway.addr,
        "POST",
        "/v1/media",
        &[("Authorization", &auth), ("Content-Type", "video/mp4")],
        Body::Chunked(&mut next),
    )
    .await;
    let upload_time = started.elapsed();
    let peak_upload = gateway.memory_mib("VmHWM:");
    assert_eq!(uploaded.status, 201, "{:?}", uploaded.json());
    let stored = uploaded.json();
    let expected: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(stored["sha256"], expected.as_str());
    assert_eq!(stored["size"], FILE_MIB * MIB);

    let path = format!("/v1/media/{}", stored["id"].as_str().unwrap());
    let started = Instant::now();
    let downloaded = request(
        gateway.addr,
        "GET",
        &path,
        &[("Authorization", &auth)],
        Body::None,
    )
    .await;
    let download_time = started.elapsed();
    assert_eq!(downloaded.status, 200);
    assert_eq!(downloaded.body.len(), FILE_MIB * MIB);
    let digest: String = Sha256::digest(&downloaded.body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(digest, expected, "the download differs from the upload");
    let peak_after_download = gateway.memory_mib("VmHWM:");

    eprintln!(
        "200 MiB: upload {:.1} MiB/s, download {:.1} MiB/s; gateway RSS idle {idle:.1} MiB, \
         peak during upload {peak_upload:.1} MiB, after download {peak_after_download:.1} MiB \
         ({} build)",
        FILE_MIB as f64 / upload_time.as_secs_f64(),
        FILE_MIB as f64 / download_time.as_secs_f64(),
        natter_e2e::build_profile(),
    );
    // Holding the file would take 200 MiB; streaming needs a few MiB over idle.
    assert!(
        peak_upload < idle + 32.0,
        "gateway peaked at {peak_upload:.1} MiB (idle {idle:.1} MiB) during the upload"
    );
    assert!(
        peak_after_download < idle + 32.0,
        "gateway peaked at {peak_after_download:.1} MiB (idle {idle:.1} MiB) during the download"
    );
}
