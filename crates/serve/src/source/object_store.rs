//! Versions under an object-store prefix (`s3://`, `gs://`, `az://`), downloaded into a local cache.
//!
//! A version is every object under `<prefix>/<number>/`. It is served from `<cache>/<number>/`, which
//! appears only by one rename after every object was downloaded into a hidden `.kiln-tmp-*` directory
//! beside it and the verifying open accepted the lot, so a half-downloaded or corrupt version never
//! exists in the cache under a version's name. Credentials and endpoints come from each cloud's usual
//! environment (object_store's `from_env` builders); requests are retried a few times and then left to
//! the next poll, so a flaky store costs a poll, not the version that is serving.
//!
//! Object stores have no atomic publish: an upload lands object by object. A version is listed only once
//! every file its manifest names is there (read from the small `manifest.json`, once per change of it),
//! so a version caught mid-upload waits instead of failing as incomplete.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use ::object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use ::object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use ::object_store::path::Path as ObjectPath;
use ::object_store::{BackoffConfig, ObjectStore, ObjectStoreExt as _, RetryConfig};
use artifact::{Artifact, MANIFEST_DIGEST_FILE, MANIFEST_FILE, TEMP_DIR_PREFIX};
use futures_util::TryStreamExt as _;
use url::Url;

use super::{Listing, SourceError, VersionSource, VersionStamp};

/// Retries per request: the watcher polls again soon anyway, and short retries keep a poll, a config
/// change and shutdown prompt while a store is down.
const MAX_RETRIES: usize = 3;

/// Longest a request keeps retrying.
const RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a listing of the base may take, retries included, before the poll gives up on it.
const LIST_TIMEOUT: Duration = Duration::from_secs(120);

/// One object of a remote version.
#[derive(Debug, Hash)]
struct RemoteObject {
    /// `/`-separated name inside the version, as object_store's path parts spell it.
    name: String,
    location: ObjectPath,
    size: u64,
    e_tag: Option<String>,
    modified_ms: i64,
}

/// A version as the last listing found it.
#[derive(Debug)]
struct RemoteVersion {
    /// The version's prefix segment as stored (`007` stays `007`).
    spelling: String,
    objects: Vec<RemoteObject>,
}

/// An object-store base and this model's cache directory.
pub(crate) struct ObjectStoreSource {
    /// The base URL, for messages.
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// object_store is async; the watcher is a blocking thread, so it drives its requests on its own
    /// single-threaded runtime and never touches the server's executor.
    runtime: tokio::runtime::Runtime,
    /// `<cache root>/<model>`: verified versions by number, and hidden downloads in progress.
    cache: PathBuf,
    listed: BTreeMap<u64, RemoteVersion>,
    /// Per version: its manifest object as last read, and the files that manifest names.
    manifests: BTreeMap<u64, (ObjectStamp, Vec<String>)>,
    /// Versions found whole at least once: listed from then on as they are, so that a damaged version
    /// reaches the watcher (which fails it) instead of vanishing from the listing.
    whole: BTreeSet<u64>,
    /// Per version still uploading: the files it waits for, as last logged.
    waiting: BTreeMap<u64, Vec<String>>,
}

/// What identifies one state of an object: a changed manifest is read again.
type ObjectStamp = (u64, Option<String>, i64);

impl ObjectStoreSource {
    /// Sets up the client for `url` from the environment plus `store_config`; nothing is requested yet.
    /// Versions are cached under `cache`.
    pub(crate) fn open(
        url: &Url,
        store_config: &[(String, String)],
        cache: PathBuf,
    ) -> Result<Self, SourceError> {
        let setup = |source| SourceError::Setup { url: url.to_string(), source };
        let store = build_store(url, store_config).map_err(setup)?;
        let prefix = ObjectPath::from_url_path(url.path()).map_err(|e| setup(e.into()))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(SourceError::Runtime)?;
        Ok(ObjectStoreSource {
            url: url.to_string(),
            store,
            prefix,
            runtime,
            cache,
            listed: BTreeMap::new(),
            manifests: BTreeMap::new(),
            whole: BTreeSet::new(),
            waiting: BTreeMap::new(),
        })
    }

    /// Downloads every object of `version` into `dir`.
    fn download(&self, version: &RemoteVersion, dir: &Path) -> Result<(), SourceError> {
        for object in &version.objects {
            let mut path = dir.to_owned();
            for part in object.name.split('/') {
                // object_store's path parts are never empty, `.` or `..`, nor hold `/`: checked again
                // because this path is written to.
                if part.is_empty() || part == "." || part == ".." || part.contains('\\') {
                    return Err(SourceError::Layout(format!(
                        "{}: object name `{}` cannot be stored as a local file",
                        self.url, object.name
                    )));
                }
                path.push(part);
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| SourceError::Cache {
                    action: "create directory",
                    path: parent.to_owned(),
                    source,
                })?;
            }
            let mut file = std::fs::File::create(&path).map_err(|source| SourceError::Cache {
                action: "create",
                path: path.clone(),
                source,
            })?;
            let store_error = |source| SourceError::Store {
                what: format!("get {}", self.object_url(&object.location)),
                source,
            };
            // Written as it arrives: a graph can be hundreds of megabytes. Blocking writes are fine on
            // this runtime, which only this thread uses.
            self.runtime.block_on(async {
                let mut stream = self.store.get(&object.location).await.map_err(store_error)?.into_stream();
                while let Some(chunk) = stream.try_next().await.map_err(store_error)? {
                    file.write_all(&chunk).map_err(|source| SourceError::Cache {
                        action: "write",
                        path: path.clone(),
                        source,
                    })?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// The files of `remote` its manifest names that are not uploaded yet (the manifest files included).
    /// A manifest that does not parse names nothing more: the verifying open reports what is wrong.
    fn missing_files(&mut self, version: u64, remote: &RemoteVersion) -> Result<Vec<String>, SourceError> {
        let object = |name: &str| remote.objects.iter().find(|o| o.name == name);
        let Some(manifest) = object(MANIFEST_FILE) else {
            return Ok(vec![MANIFEST_FILE.to_owned()]);
        };
        let stamp = (manifest.size, manifest.e_tag.clone(), manifest.modified_ms);
        if self.manifests.get(&version).is_none_or(|(read, _)| *read != stamp) {
            let store_error = |source| SourceError::Store {
                what: format!("get {}", self.object_url(&manifest.location)),
                source,
            };
            let bytes = self.runtime.block_on(async {
                self.store
                    .get(&manifest.location)
                    .await
                    .map_err(store_error)?
                    .bytes()
                    .await
                    .map_err(store_error)
            })?;
            let names = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|manifest| {
                    manifest.get("files")?.as_object().map(|files| files.keys().cloned().collect())
                })
                .unwrap_or_default();
            self.manifests.insert(version, (stamp, names));
        }
        let named = self.manifests.get(&version).map(|(_, names)| names.as_slice()).unwrap_or_default();
        Ok(std::iter::once(MANIFEST_DIGEST_FILE)
            .chain(named.iter().map(String::as_str))
            .filter(|name| object(name).is_none())
            .map(str::to_owned)
            .collect())
    }

    /// Keeps the versions that are whole, or were once, or whose manifest cannot be read now (their
    /// download then fails with the store's error, as any read would); logs a version that waits for
    /// files whenever what it waits for changes.
    fn keep_whole(&mut self, versions: &mut BTreeMap<u64, RemoteVersion>) {
        let mut uploading = BTreeMap::new();
        for (&version, remote) in versions.iter() {
            if self.whole.contains(&version) {
                continue;
            }
            match self.missing_files(version, remote) {
                Ok(missing) if missing.is_empty() => {
                    self.whole.insert(version);
                }
                Ok(missing) => {
                    if self.waiting.get(&version) != Some(&missing) {
                        tracing::info!(
                            "{}/{}: not a version yet, still uploading: waiting for {}",
                            self.url.trim_end_matches('/'),
                            remote.spelling,
                            missing.join(", ")
                        );
                    }
                    uploading.insert(version, missing);
                }
                Err(error) => tracing::debug!("cannot tell whether version {version} is whole: {error}"),
            }
        }
        versions.retain(|version, _| !uploading.contains_key(version));
        self.manifests.retain(|version, _| versions.contains_key(version) || uploading.contains_key(version));
        self.whole.retain(|version| versions.contains_key(version));
        self.waiting = uploading;
    }

    fn object_url(&self, location: &ObjectPath) -> String {
        let base = self.url.trim_end_matches('/');
        let relative = location
            .prefix_match(&self.prefix)
            .map(|parts| parts.map(|p| p.as_ref().to_owned()).collect::<Vec<_>>().join("/"));
        match relative {
            Some(relative) => format!("{base}/{relative}"),
            None => location.to_string(),
        }
    }
}

impl VersionSource for ObjectStoreSource {
    fn list(&mut self) -> Result<Listing, SourceError> {
        let what = || format!("list {}", self.url);
        // The timer is made inside the runtime, which it needs.
        let listing = async {
            tokio::time::timeout(LIST_TIMEOUT, self.store.list(Some(&self.prefix)).try_collect::<Vec<_>>())
                .await
        };
        let objects = match self.runtime.block_on(listing) {
            Ok(Ok(objects)) => objects,
            Ok(Err(source)) => return Err(SourceError::Store { what: what(), source }),
            Err(_) => return Err(SourceError::Timeout { what: what(), seconds: LIST_TIMEOUT.as_secs() }),
        };
        let mut versions: BTreeMap<u64, RemoteVersion> = BTreeMap::new();
        for meta in objects {
            let Some(mut parts) = meta.location.prefix_match(&self.prefix) else {
                continue;
            };
            let Some(first) = parts.next() else {
                continue;
            };
            let Some(version) = artifact::parse_version(first.as_ref()) else {
                continue;
            };
            let name = parts.map(|p| p.as_ref().to_owned()).collect::<Vec<_>>().join("/");
            // An object named like the version itself (a folder marker) holds no file of it.
            if name.is_empty() {
                continue;
            }
            let entry = versions.entry(version).or_insert_with(|| RemoteVersion {
                spelling: first.as_ref().to_owned(),
                objects: Vec::new(),
            });
            if entry.spelling != first.as_ref() {
                return Err(SourceError::Layout(format!(
                    "{}: `{}` and `{}` spell the same version {version}; remove one",
                    self.url,
                    entry.spelling,
                    first.as_ref()
                )));
            }
            entry.objects.push(RemoteObject {
                name,
                size: meta.size,
                e_tag: meta.e_tag.clone(),
                modified_ms: meta.last_modified.timestamp_millis(),
                location: meta.location.clone(),
            });
        }
        for version in versions.values_mut() {
            version.objects.sort_by(|a, b| a.name.cmp(&b.name));
        }
        self.keep_whole(&mut versions);
        let listing = versions.iter().map(|(&v, remote)| (v, VersionStamp::of(&remote.objects))).collect();
        self.listed = versions;
        Ok(listing)
    }

    fn materialize(&mut self, version: u64) -> Result<PathBuf, SourceError> {
        let remote = self.listed.get(&version).ok_or(SourceError::NotListed(version))?;
        let dest = self.cache.join(version.to_string());
        let cache_error = |action, path: &Path| {
            let path = path.to_owned();
            move |source| SourceError::Cache { action, path, source }
        };
        if dest.exists() {
            // Left by a server that was killed, or by a version that failed after it was fetched.
            std::fs::remove_dir_all(&dest).map_err(cache_error("remove the old copy", &dest))?;
        }
        std::fs::create_dir_all(&self.cache).map_err(cache_error("create cache directory", &self.cache))?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let temp = self.cache.join(format!("{TEMP_DIR_PREFIX}{version}-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&temp).map_err(cache_error("create download directory", &temp))?;
        let verified = self
            .download(remote, &temp)
            .and_then(|()| {
                let version = format!("{}/{}", self.url.trim_end_matches('/'), remote.spelling);
                Artifact::open(&temp).map(drop).map_err(|source| SourceError::Content { version, source })
            })
            .and_then(|()| std::fs::rename(&temp, &dest).map_err(cache_error("rename into place", &temp)));
        if let Err(error) = verified {
            if let Err(e) = std::fs::remove_dir_all(&temp) {
                tracing::warn!(dir = %temp.display(), "cannot remove a failed download: {e}");
            }
            return Err(error);
        }
        Ok(dest)
    }

    fn retain_local(&mut self, loaded: &BTreeSet<u64>) {
        let Ok(entries) = std::fs::read_dir(&self.cache) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let serving =
                artifact::parse_version(&name).is_some_and(|v| loaded.contains(&v) && name == v.to_string());
            if serving {
                continue;
            }
            let path = entry.path();
            let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => tracing::debug!(path = %path.display(), "removed from the model cache"),
                Err(e) => tracing::warn!(path = %path.display(), "cannot remove from the model cache: {e}"),
            }
        }
        if loaded.is_empty() {
            // Only succeeds once empty; a leftover directory is harmless.
            let _ = std::fs::remove_dir(&self.cache);
        }
    }
}

/// The client for `url` (scheme already checked by `BasePath`), configured from the cloud's
/// environment, then `config`'s keys that belong to that cloud.
fn build_store(
    url: &Url,
    config: &[(String, String)],
) -> Result<Arc<dyn ObjectStore>, ::object_store::Error> {
    // object_store signs with ring (its `ring` feature), but its reqwest client is rustls without a
    // bundled provider (reqwest's would be aws-lc-rs) and takes the process's default: ring, as kiln's
    // own TLS uses. An error only says a default is installed already, which then serves as well.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: MAX_RETRIES,
        retry_timeout: RETRY_TIMEOUT,
    };
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "s3" => {
            let builder = AmazonS3Builder::from_env().with_url(url.as_str()).with_retry(retry);
            let builder =
                config.iter().fold(builder, |b, (key, value)| match key.parse::<AmazonS3ConfigKey>() {
                    Ok(key) => b.with_config(key, value),
                    Err(_) => b,
                });
            Arc::new(builder.build()?)
        }
        "gs" => {
            let builder = GoogleCloudStorageBuilder::from_env().with_url(url.as_str()).with_retry(retry);
            let builder =
                config.iter().fold(builder, |b, (key, value)| match key.parse::<GoogleConfigKey>() {
                    Ok(key) => b.with_config(key, value),
                    Err(_) => b,
                });
            Arc::new(builder.build()?)
        }
        "az" => {
            let builder = MicrosoftAzureBuilder::from_env().with_url(url.as_str()).with_retry(retry);
            let builder =
                config.iter().fold(builder, |b, (key, value)| match key.parse::<AzureConfigKey>() {
                    Ok(key) => b.with_config(key, value),
                    Err(_) => b,
                });
            Arc::new(builder.build()?)
        }
        scheme => {
            return Err(::object_store::Error::NotSupported {
                source: format!("`{scheme}://` is not an object store kiln reads").into(),
            });
        }
    };
    Ok(store)
}

/// Refuses keys no cloud's builder knows.
pub(super) fn check_config(config: &[(String, String)]) -> Result<(), String> {
    match config.iter().find(|(key, _)| {
        key.parse::<AmazonS3ConfigKey>().is_err()
            && key.parse::<GoogleConfigKey>().is_err()
            && key.parse::<AzureConfigKey>().is_err()
    }) {
        Some((key, _)) => Err(format!(
            "`{key}` is not an object store setting (object_store's keys: aws_endpoint, google_service_account, \
             azure_storage_account_name, ...)"
        )),
        None => Ok(()),
    }
}
