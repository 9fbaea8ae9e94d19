//! How far long work has got, reported by library code that must not print.

/// Where export and check report progress through long work (building a large graph, comparing hundreds
/// of images); the binary decides how to show it (a bar on a terminal, plain lines in a log, nothing with
/// `--json`). It lives in runtime because every crate that runs models over many images depends on it, so
/// the binary implements one trait for all of them.
pub trait Progress {
    /// A step begins, ending the one before: what it does, and how many items it has (`None` when it is
    /// measured only in time).
    fn start(&self, what: &str, total: Option<u64>);
    /// `n` more items of the current step are done.
    fn advance(&self, n: u64);
    /// The last step is done.
    fn finish(&self);
    /// Something the user should read that is not a step, such as a leftover the library cleaned up.
    fn note(&self, message: &str);
}

/// Reports nothing: for callers that show no progress (tests, embedding code).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _what: &str, _total: Option<u64>) {}
    fn advance(&self, _n: u64) {}
    fn finish(&self) {}
    fn note(&self, _message: &str) {}
}
