//! A real S3 server for the object-store tests: s3s-fs (objects stored as files, SigV4 signatures
//! checked) on a loopback port, plus a switch that makes it answer 503 SlowDown the way a store in
//! trouble does. Shared by the serve tests and the `kiln serve` end-to-end test.

// The end-to-end test uses the environment form, the serve tests the config form.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use hyper::service::Service;
use hyper_util::rt::TokioIo;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt as _, PutPayload};

type Result<T = (), E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

/// The only credentials the server accepts.
pub const ACCESS_KEY: &str = "kiln-test-access-key";
pub const SECRET_KEY: &str = "kiln-test-secret-key";
pub const REGION: &str = "us-east-1";

/// Which requests the server refuses with 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Failing {
    Nothing = 0,
    /// Every request, listings included: a store that is down.
    Everything = 1,
    /// Object reads only (listings still work): downloads break off.
    Reads = 2,
}

/// A running server with one bucket; stops when dropped.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    pub bucket: String,
    /// The directory s3s-fs stores the bucket in.
    _root: tempfile::TempDir,
    failing: Arc<AtomicU8>,
    accept: tokio::task::JoinHandle<()>,
}

impl S3Server {
    /// Starts a server with an empty bucket `bucket` on a free loopback port.
    pub async fn start(bucket: &str) -> Result<S3Server> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir(root.path().join(bucket))?;
        let store = s3s_fs::FileSystem::new(root.path()).map_err(|e| format!("s3s-fs: {e:?}"))?;
        let mut builder = s3s::service::S3ServiceBuilder::new(store);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let failing = Arc::new(AtomicU8::new(Failing::Nothing as u8));
        let switch = failing.clone();
        let accept = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (service, switch) = (service.clone(), switch.clone());
                let handler = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let listing = request.uri().query().is_some_and(|q| q.contains("list-type"));
                        let refuse = match switch.load(Ordering::SeqCst) {
                            1 => true,
                            2 => !listing && request.method() == hyper::Method::GET,
                            _ => false,
                        };
                        let service = service.clone();
                        async move {
                            if refuse {
                                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code>\
                                        <Message>test store refusing</Message></Error>";
                                let mut response = hyper::Response::new(s3s::Body::from(body.to_owned()));
                                *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                                return Ok(response);
                            }
                            // hyper's `call`: S3Service's own one takes s3s's request type.
                            Service::call(&service, request).await
                        }
                    },
                );
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), handler)
                        .await;
                });
            }
        });
        Ok(S3Server { endpoint, bucket: bucket.to_owned(), _root: root, failing, accept })
    }

    /// Makes the server refuse `what` from now on.
    pub fn set_failing(&self, what: Failing) {
        self.failing.store(what as u8, Ordering::SeqCst);
    }

    /// object_store settings that reach this server, as the environment variables of `kiln serve`
    /// would give them (`AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ...).
    pub fn config(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", ACCESS_KEY),
            ("aws_secret_access_key", SECRET_KEY),
            ("aws_region", REGION),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The same settings as environment variables, for a `kiln serve` child process.
    pub fn env(&self) -> Vec<(String, String)> {
        self.config().into_iter().map(|(k, v)| (k.to_ascii_uppercase(), v)).collect()
    }

    /// A client for uploads, through the same S3 protocol the server under test uses.
    pub fn client(&self) -> Result<AmazonS3> {
        // object_store's HTTP client needs a process-wide rustls provider, as in the server.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = self
            .config()
            .into_iter()
            .try_fold(AmazonS3Builder::new().with_bucket_name(&self.bucket), |b, (key, value)| {
                Ok::<_, object_store::Error>(b.with_config(key.parse()?, value))
            })?;
        Ok(builder.build()?)
    }

    /// Uploads every file under `dir` to `<prefix>/<relative path>`, one object at a time (an upload
    /// is never atomic across objects, which is what the server under test must cope with).
    pub async fn upload_dir(&self, dir: &Path, prefix: &str) -> Result {
        let client = self.client()?;
        let mut pending = vec![dir.to_owned()];
        while let Some(current) = pending.pop() {
            for entry in std::fs::read_dir(&current)? {
                let path = entry?.path();
                if path.is_dir() {
                    pending.push(path);
                    continue;
                }
                let relative = path.strip_prefix(dir)?.to_str().ok_or("non-UTF-8 file name")?.to_owned();
                let bytes = std::fs::read(&path)?;
                client
                    .put(&ObjectPath::parse(format!("{prefix}/{relative}"))?, PutPayload::from(bytes))
                    .await?;
            }
        }
        Ok(())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
