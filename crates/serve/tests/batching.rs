//! The batching queue seen from outside: concurrent requests merge into one graph run, and a request
//! whose deadline passed is skipped instead of run.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use serve::BatchingParameters;
use support::{Fixture, TestResult, TestServer, b64, image, serve_fixture};

async fn metrics(server: &TestServer) -> TestResult<String> {
    Ok(server.http.get(format!("{}/monitoring/prometheus/metrics", server.rest)).send().await?.text().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_share_one_batch() -> TestResult {
    let Fixture { base: _base, dir: _dir, server } = serve_fixture(1, |options| {
        options.batching = Some(BatchingParameters {
            max_batch_size: 8,
            // Long enough that four requests sent together always make it into the first batch.
            batch_timeout: Duration::from_millis(500),
            ..BatchingParameters::default()
        });
    })
    .await?;
    let body = json!({"instances": [b64(&image("rocket.jpg")?)]});
    let url = format!("{}/v1/models/vit:predict", server.rest);
    let requests: Vec<_> = (0..4).map(|_| tokio::spawn(server.http.post(&url).json(&body).send())).collect();
    for request in requests {
        assert_eq!(request.await??.status().as_u16(), 200);
    }
    let text = metrics(&server).await?;
    for needle in [
        ":tensorflow:serving:batching_session:processed_batch_size_count{model_name=\"vit\"} 1",
        ":tensorflow:serving:batching_session:processed_batch_size_sum{model_name=\"vit\"} 4",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_whose_client_left_are_skipped() -> TestResult {
    let Fixture { base: _base, dir: _dir, server } = serve_fixture(1, |options| {
        options.rest_timeout = Duration::from_millis(300);
        options.batching = Some(BatchingParameters { max_batch_size: 1, ..BatchingParameters::default() });
    })
    .await?;
    let url = format!("{}/v1/models/vit:predict", server.rest);
    // The first request keeps the batch thread busy for well over the 300 ms deadline; the second waits
    // behind it, times out, and must then be dropped from the queue unrun.
    let slow = json!({"instances": vec![b64(&image("large-2400x2093.jpg")?); 6]});
    let first = tokio::spawn(server.http.post(&url).json(&slow).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second =
        server.http.post(&url).json(&json!({"instances": [b64(&image("rocket.jpg")?)]})).send().await?;
    assert_eq!(second.status().as_u16(), 504);
    assert_eq!(first.await??.status().as_u16(), 504);
    let needle = "kiln_cancelled_requests_total{model_name=\"vit\",reason=\"deadline_exceeded\"}";
    let started = Instant::now();
    loop {
        let text = metrics(&server).await?;
        if text.contains(needle) {
            // The second request never reached the graph (the slow one is dropped too when its deadline
            // passes while it decodes).
            let graph_instances =
                ":tensorflow:serving:batching_session:processed_batch_size_sum{model_name=\"vit\"} 7";
            assert!(!text.contains(graph_instances), "{text}");
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!("missing {needle} in\n{text}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.server.shutdown().await;
    Ok(())
}
