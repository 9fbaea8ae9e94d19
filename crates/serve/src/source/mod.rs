//! Where a model's versions come from: one interface for the version watcher, one module per member.
//!
//! The watcher's policy (which versions to serve, load before unload, retry a failed version only when
//! its content changes, DATA_LOSS on a serving version whose files change) is written once against
//! [`VersionSource`]: list the versions with a cheap [`VersionStamp`] each, materialize one into a local
//! directory the verifying open and the runtime read, and drop local copies nobody serves. A
//! [`BasePath`] picks the member: a local directory ([`directory`]) or an `s3://`, `gs://` or `az://`
//! prefix ([`object_store`]) downloaded into a local cache.

mod directory;
mod object_store;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};

use url::Url;

use self::directory::DirectorySource;
use self::object_store::ObjectStoreSource;

/// The URL schemes of the object stores kiln reads: Amazon S3 (and S3-compatible stores through
/// `AWS_ENDPOINT_URL`), Google Cloud Storage, Azure Blob Storage.
const STORE_SCHEMES: [&str; 3] = ["s3", "gs", "az"];

/// Where a model's versions live (TF Serving's `base_path`): a local directory, or an object-store
/// prefix such as `s3://bucket/models/vit` whose numeric child prefixes are versions.
///
/// Text is parsed with [`str::parse`]: `s3://`, `gs://` and `az://` URLs name object stores, any other
/// `scheme://` is refused, everything else is a local path. A [`PathBuf`] always converts to a local
/// path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasePath(Location);

/// A [`BasePath`] resolved into what the sources need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// A directory whose integer-named children are versions.
    Local(PathBuf),
    /// An object-store URL with a supported scheme and a bucket (container) name.
    Store(Url),
}

impl BasePath {
    /// The local directory, or `None` for an object-store URL.
    pub fn as_local(&self) -> Option<&Path> {
        match &self.0 {
            Location::Local(dir) => Some(dir),
            Location::Store(_) => None,
        }
    }

    pub(crate) fn location(&self) -> &Location {
        &self.0
    }
}

impl From<PathBuf> for BasePath {
    fn from(dir: PathBuf) -> Self {
        BasePath(Location::Local(dir))
    }
}

impl From<&Path> for BasePath {
    fn from(dir: &Path) -> Self {
        BasePath(Location::Local(dir.to_owned()))
    }
}

impl From<&PathBuf> for BasePath {
    fn from(dir: &PathBuf) -> Self {
        BasePath(Location::Local(dir.clone()))
    }
}

impl FromStr for BasePath {
    type Err = BasePathError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if !text.contains("://") {
            return Ok(BasePath(Location::Local(PathBuf::from(text))));
        }
        let url =
            Url::parse(text).map_err(|source| BasePathError::InvalidUrl { text: text.to_owned(), source })?;
        if !STORE_SCHEMES.contains(&url.scheme()) {
            return Err(BasePathError::UnsupportedScheme {
                text: text.to_owned(),
                scheme: url.scheme().to_owned(),
            });
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(BasePathError::NoBucket { text: text.to_owned() });
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(BasePathError::QueryOrFragment { text: text.to_owned() });
        }
        ::object_store::path::Path::from_url_path(url.path())
            .map_err(|source| BasePathError::Prefix { text: text.to_owned(), source })?;
        Ok(BasePath(Location::Store(url)))
    }
}

impl fmt::Display for BasePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Location::Local(dir) => write!(f, "{}", dir.display()),
            Location::Store(url) => f.write_str(url.as_str()),
        }
    }
}

/// Why a `base_path` text is not one kiln can serve from.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BasePathError {
    /// It looks like a URL (`scheme://`) but does not parse as one.
    #[error("base path `{text}` is not a valid URL")]
    InvalidUrl {
        /// The base path as given.
        text: String,
        /// The URL parser's error.
        #[source]
        source: url::ParseError,
    },
    /// A URL whose scheme is not an object store kiln reads.
    #[error(
        "base path `{text}`: `{scheme}://` is not supported; use a local directory or an s3://, gs:// or \
         az:// URL"
    )]
    UnsupportedScheme {
        /// The base path as given.
        text: String,
        /// The scheme found.
        scheme: String,
    },
    /// An object-store URL without a bucket (container) name.
    #[error("base path `{text}` names no bucket: use <scheme>://<bucket>/<prefix>")]
    NoBucket {
        /// The base path as given.
        text: String,
    },
    /// An object-store URL with `?...` or `#...`, which would otherwise be dropped silently.
    #[error("base path `{text}` has a query or fragment; give settings through the environment instead")]
    QueryOrFragment {
        /// The base path as given.
        text: String,
    },
    /// A prefix object_store cannot address (an empty, `.` or `..` segment, a control character).
    #[error("base path `{text}` has an invalid object prefix")]
    Prefix {
        /// The base path as given.
        text: String,
        /// object_store's path error.
        #[source]
        source: ::object_store::path::Error,
    },
}

/// What identifies a version's content cheaply (modification times of a directory, sizes and ETags of
/// objects). A version that failed to load is retried only when its stamp changes: a copy or upload
/// finished, a file was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VersionStamp(u64);

impl VersionStamp {
    /// The stamp of whatever describes a version's content; equal descriptions give equal stamps.
    pub(crate) fn of(content: &impl Hash) -> VersionStamp {
        let mut hasher = DefaultHasher::new();
        content.hash(&mut hasher);
        VersionStamp(hasher.finish())
    }
}

/// Why a source could not list or materialize.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    /// A local base directory could not be listed.
    #[error(transparent)]
    Listing(artifact::ArtifactError),
    /// A version's files do not form a verified artifact (missing, extra or damaged files): retried
    /// only when the version's stamp changes.
    #[error("`{version}` does not verify")]
    Content {
        /// The version, as its URL.
        version: String,
        /// What the verifying open found.
        #[source]
        source: artifact::ArtifactError,
    },
    /// The object store could not be set up from the URL and the environment.
    #[error("cannot set up the object store for `{url}`")]
    Setup {
        /// The base URL.
        url: String,
        /// object_store's error.
        #[source]
        source: ::object_store::Error,
    },
    /// The object store failed or timed out: retried at the next poll.
    #[error("object store request `{what}` failed")]
    Store {
        /// The request, with the object or prefix it named.
        what: String,
        /// object_store's error.
        #[source]
        source: ::object_store::Error,
    },
    /// The object store did not answer within the time kiln gives it.
    #[error("object store request `{what}` timed out after {seconds} s")]
    Timeout {
        /// The request, with the object or prefix it named.
        what: String,
        /// The limit.
        seconds: u64,
    },
    /// The object store lists a name kiln cannot download safely or two spellings of one version.
    #[error("{0}")]
    Layout(String),
    /// The local cache could not be written.
    #[error("cannot {action} `{}`", path.display())]
    Cache {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The single-threaded runtime that drives object-store requests could not start.
    #[error("cannot start the object store client's runtime")]
    Runtime(#[source] std::io::Error),
    /// The watcher asked for a version the last listing did not show.
    #[error("version {0} was not in the last listing")]
    NotListed(u64),
}

impl SourceError {
    /// Whether the version's content itself is bad (so it waits for a new stamp) rather than the store,
    /// the network or the local disk (so the next poll tries again).
    pub(crate) fn is_content(&self) -> bool {
        matches!(self, SourceError::Content { .. })
    }
}

/// The versions a listing found, by number, with each one's stamp.
pub(crate) type Listing = BTreeMap<u64, VersionStamp>;

/// One model's source of versions, used by its watcher thread only.
pub(crate) trait VersionSource: Send {
    /// The versions the base holds now. An error means the base cannot be listed at all.
    fn list(&mut self) -> Result<Listing, SourceError>;

    /// A local directory holding version `version` (as of the last [`VersionSource::list`]), complete,
    /// for the verifying open. A remote version is downloaded and verified before it appears there.
    fn materialize(&mut self, version: u64) -> Result<PathBuf, SourceError>;

    /// Removes local copies of versions outside `loaded` (the ones serving), and anything half-made.
    fn retain_local(&mut self, loaded: &BTreeSet<u64>);
}

/// What every source of a server shares.
#[derive(Debug, Clone)]
pub(crate) struct SourceOptions {
    cache: Arc<CacheRoot>,
    /// object_store configuration keys applied over each cloud's environment.
    store_config: Vec<(String, String)>,
}

/// Where object-store versions are downloaded, one subdirectory per model.
#[derive(Debug)]
enum CacheRoot {
    /// `--model_cache_dir` (a volume sized for the models, say); it holds the serving versions only.
    Given(PathBuf),
    /// A private directory under the system temp dir, made when the first object-store model needs it
    /// (a server of local models writes nothing there) and removed when the server is dropped.
    Temporary(Mutex<Option<tempfile::TempDir>>),
}

impl SourceOptions {
    /// Options with the cache under `cache_dir`, or a temporary directory when `None`.
    pub(crate) fn new(cache_dir: Option<PathBuf>, store_config: Vec<(String, String)>) -> SourceOptions {
        let cache = match cache_dir {
            Some(dir) => CacheRoot::Given(dir),
            None => CacheRoot::Temporary(Mutex::new(None)),
        };
        SourceOptions { cache: Arc::new(cache), store_config }
    }

    /// The cache root, made on first use when it is temporary.
    fn cache_root(&self) -> Result<PathBuf, SourceError> {
        match &*self.cache {
            CacheRoot::Given(dir) => Ok(dir.clone()),
            CacheRoot::Temporary(made) => {
                let mut made = made.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(dir) = made.as_ref() {
                    return Ok(dir.path().to_owned());
                }
                let dir =
                    tempfile::Builder::new().prefix("kiln-model-cache-").tempdir().map_err(|source| {
                        SourceError::Cache {
                            action: "create a model cache in",
                            path: std::env::temp_dir(),
                            source,
                        }
                    })?;
                let path = dir.path().to_owned();
                tracing::info!(cache = %path.display(), "object-store models are cached in a temporary directory");
                *made = Some(dir);
                Ok(path)
            }
        }
    }
}

/// The source `base` names, for model `model`.
pub(crate) fn open(
    model: &str,
    base: &BasePath,
    options: &SourceOptions,
) -> Result<Box<dyn VersionSource>, SourceError> {
    Ok(match base.location() {
        Location::Local(dir) => Box::new(DirectorySource::new(dir.clone())),
        Location::Store(url) => {
            let cache = cache_dir(&options.cache_root()?, model);
            Box::new(ObjectStoreSource::open(url, &options.store_config, cache)?)
        }
    })
}

/// The cache directory of one model: its name made file-safe, plus the start of the name's sha256, so
/// names that differ only in unsafe characters do not share a directory and a restart finds it again.
fn cache_dir(root: &Path, model: &str) -> PathBuf {
    use sha2::Digest as _;
    let safe: String =
        model.chars().map(|c| if c.is_ascii_alphanumeric() || "-_".contains(c) { c } else { '_' }).collect();
    let digest = sha2::Sha256::digest(model.as_bytes());
    let tag: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    root.join(format!("{safe}-{tag}"))
}

/// Checks that every key of `config` is a setting of at least one object store, so a typo is an
/// error at start rather than a silently ignored setting.
pub(crate) fn check_store_config(config: &[(String, String)]) -> Result<(), String> {
    self::object_store::check_config(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn base_paths_parse_urls_and_local_paths() -> TestResult {
        assert_eq!("/models/vit".parse::<BasePath>()?.as_local(), Some(Path::new("/models/vit")));
        assert_eq!("models/vit".parse::<BasePath>()?.as_local(), Some(Path::new("models/vit")));
        for url in ["s3://bucket/models/vit", "gs://bucket/vit/", "az://container/a/b", "s3://bucket"] {
            let base: BasePath = url.parse()?;
            assert_eq!(base.as_local(), None, "{url}");
            assert_eq!(base.to_string(), url);
        }
        for (text, why) in [
            ("hdfs://host/models", "`hdfs://` is not supported"),
            ("file:///models", "`file://` is not supported"),
            ("s3:///models", "names no bucket"),
            ("gs://bucket/a//b", "invalid object prefix"),
            ("s3://bucket/m?versionId=1", "query or fragment"),
            ("s3://bu cket/m", "not a valid URL"),
        ] {
            let error = text.parse::<BasePath>().err().ok_or(format!("{text} accepted"))?.to_string();
            assert!(error.contains(why) && error.contains(text), "{text}: {error}");
        }
        Ok(())
    }

    #[test]
    fn cache_dirs_differ_for_names_that_sanitize_alike() {
        let root = Path::new("/cache");
        let (a, b) = (cache_dir(root, "a/b"), cache_dir(root, "a_b"));
        assert_ne!(a, b);
        assert!(
            a.starts_with("/cache") && a.file_name().is_some_and(|n| n.to_string_lossy().starts_with("a_b-"))
        );
    }
}
