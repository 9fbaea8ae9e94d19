//! Version swaps start no threads: every loaded version runs on the process's one engine pool and
//! decode pool, and batch threads are reused, so memory stays flat across reloads (new threads meant,
//! with glibc, malloc arenas that each kept a full-size decode buffer).

mod support;

use std::collections::BTreeSet;

use serde_json::json;
use serve::VersionState;
use support::{TestResult, b64, image, publish_copy, serve_fixture};

/// Thread ids of this process whose name starts with `prefix`, from `/proc/self/task/*/comm`.
fn threads_named(prefix: &str) -> TestResult<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?;
        // A thread that exited between the listing and the read has no name to match.
        if let Ok(name) = std::fs::read_to_string(task.path().join("comm"))
            && name.starts_with(prefix)
        {
            ids.insert(task.file_name().to_string_lossy().into_owned());
        }
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_swaps_reuse_the_engine_threads() -> TestResult {
    // Two engine threads, so batches of two images run on the pool.
    let fixture = serve_fixture(1, |options| options.runtime.threads = 2).await?;
    let server = &fixture.server;
    let rocket = b64(&image("rocket.jpg")?);
    let body = json!({"instances": [rocket, rocket]});
    let (status, _) = server.post("/v1/models/vit:predict", &body).await?;
    assert_eq!(status, 200);
    let engine = threads_named("kiln-engine2-")?;
    assert_eq!(engine.len(), 2, "engine threads: {engine:?}");
    // Decoding runs on the process's decode pool (as many threads as the engine without batching).
    let decode = threads_named("kiln-decode2-")?;
    assert_eq!(decode.len(), 2, "decode threads: {decode:?}");

    let mut batch = BTreeSet::new();
    for version in 2..=4 {
        publish_copy(&fixture.dir, fixture.base.path(), version)?;
        server.wait_for("vit", version, VersionState::Available).await?;
        server.wait_for("vit", version - 1, VersionState::End).await?;
        let (status, _) = server.post("/v1/models/vit:predict", &body).await?;
        assert_eq!(status, 200);
        assert_eq!(threads_named("kiln-engine2-")?, engine, "version {version} changed the engine threads");
        assert_eq!(threads_named("kiln-decode2-")?, decode, "version {version} changed the decode threads");
        // A new version's queue starts while the old one drains, so two batch threads take turns.
        let now = threads_named("kiln-batch")?;
        assert_eq!(now.len(), 2, "batch threads after version {version}: {now:?}");
        if version > 2 {
            assert_eq!(now, batch, "version {version} started a batch thread");
        }
        batch = now;
    }
    Ok(())
}
