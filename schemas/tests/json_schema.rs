//! Fails when `schemas/json/` no longer matches the wire types. To regenerate after an
//! intended protocol change: `NATTER_WRITE_SCHEMAS=1 cargo test -p natter-schemas`.

use std::path::Path;

#[test]
fn checked_in_json_schemas_match_the_wire_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    let write = std::env::var_os("NATTER_WRITE_SCHEMAS").is_some();
    let mut drifted = Vec::new();
    for (stem, schema) in natter_schemas::schema::all() {
        let path = dir.join(format!("{stem}.json"));
        let want = natter_schemas::schema::render(&schema);
        if write {
            std::fs::write(&path, &want).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
            drifted.push(path.display().to_string());
        }
    }
    assert!(
        drifted.is_empty(),
        "JSON Schemas drifted from the wire types: {drifted:?}; \
         run NATTER_WRITE_SCHEMAS=1 cargo test -p natter-schemas and review the diff"
    );
}

#[test]
fn client_frames_parse_per_protocol() {
    use natter_schemas::{Body, ClientFrame};
    let send: ClientFrame = serde_json::from_str(
        r#"{"type":"send","id":"c1","to":"user:bob","body":{"kind":"text","text":"hi"},"from":"mallory","ref":"r1"}"#,
    )
    .unwrap();
    match &send {
        ClientFrame::Send(s) => {
            assert_eq!(s.to, "user:bob");
            assert_eq!(s.body, Body::Text { text: "hi".into() });
        }
        other => panic!("parsed as {other:?}"),
    }
    assert_eq!(send.reference(), Some("r1"));
    for bad in [
        r#"{"type":"send"}"#,
        r#"{"type":"nope"}"#,
        r#"{"seq":1}"#,
        r#"{"type":"ack","seq":-1}"#,
        r#"{"type":"send","id":"c","to":"user:b","body":{"kind":"gif"}}"#,
        "[]",
    ] {
        assert!(
            serde_json::from_str::<ClientFrame>(bad).is_err(),
            "{bad} must not parse"
        );
    }
    let ack: ClientFrame = serde_json::from_str(r#"{"type":"ack","seq":9}"#).unwrap();
    assert_eq!(ack.kind(), "ack");
}
