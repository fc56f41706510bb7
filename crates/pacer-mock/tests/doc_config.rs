//! docs/mock.md's configuration blocks are what `pacer mock --config` accepts, and the full
//! example answers as the doc says, so the doc cannot drift from the mock.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use pacer_mock::{MockConfig, serve};

/// Every ```yaml block of docs/mock.md.
fn yaml_blocks() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/mock.md");
    let text = std::fs::read_to_string(path).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim_start() == "```yaml" => current = Some(String::new()),
            Some(_) if line.trim_start().starts_with("```") => blocks.extend(current.take()),
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[test]
fn every_config_block_of_the_doc_is_a_valid_config() {
    let blocks = yaml_blocks();
    assert!(blocks.len() >= 2, "docs/mock.md has its examples");
    for b in &blocks {
        let c: MockConfig = serde_saphyr::from_str(b).unwrap_or_else(|e| panic!("{e}\n{b}"));
        c.validate().unwrap_or_else(|e| panic!("{e}\n{b}"));
    }
}

#[tokio::test]
async fn the_example_with_every_algorithm_answers_as_the_doc_says() {
    let example = yaml_blocks()
        .into_iter()
        .find(|b| b.contains("name: nginx"))
        .unwrap();
    let config: MockConfig = serde_saphyr::from_str(&example).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = serve(config, listener).await.unwrap();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = |p: &str| format!("http://{}{p}", server.addr());

    let r = http.get(url("/gateway/x")).send().await.unwrap();
    let h = |name: &str| r.headers()[name].to_str().unwrap().to_owned();
    assert_eq!(
        (
            h("x-ratelimit-limit"),
            h("x-ratelimit-remaining"),
            h("x-ratelimit-reset")
        ),
        ("20".into(), "19".into(), "1".into())
    );
    assert!(r.headers().get("inin-ratelimit-count").is_none());

    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(
            http.get(url("/nginx/x"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 503]);

    let r = http.get(url("/ietf/x")).send().await.unwrap();
    assert_eq!(
        r.headers()["ratelimit-policy"].to_str().unwrap(),
        "\"ietf\";q=50;w=10"
    );
    server.shutdown().await;
}
