//! The batching queue of one model version: requests in, one reply each, model work on its own thread.
//!
//! Like text-embeddings-inference, a bounded queue feeds one dedicated OS thread that owns the batching
//! loop: it takes the first waiting request, keeps adding requests until `max_batch_size` instances or
//! `batch_timeout` is reached, decodes and resizes the batch's images on a few scoped threads, runs the
//! graph once, and answers each request on its own oneshot channel. Requests whose client has gone are
//! dropped before any work is spent on them; a full queue refuses new requests at once
//! ([`ServeError::ResourceExhausted`]) so overload never grows memory or latency without bound. The async
//! executor only enqueues and awaits.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use runtime::{InstanceError, Model, Prediction, PreparedImage};
use tokio::sync::oneshot;

use crate::error::ServeError;
use crate::metrics::Metrics;

/// How one queue forms batches.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BatchOptions {
    /// Most instances merged into one graph run; a larger single request still runs alone.
    pub(crate) max_batch_size: usize,
    /// How long a batch waits for more requests after its first; zero takes what is queued.
    pub(crate) timeout: Duration,
    /// Most instances waiting in the queue before new requests are refused, and most instances one
    /// request may carry.
    pub(crate) capacity: usize,
    /// Threads decoding one batch's images (1 decodes on the batch thread itself).
    pub(crate) decode_threads: usize,
}

/// Why a queued request failed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JobError {
    /// One instance could not be decoded; the request's other instances were not run.
    Instance {
        /// Position of the instance in the request.
        index: usize,
        /// What was wrong with it.
        error: InstanceError,
    },
    /// The whole request failed.
    Request(ServeError),
}

/// What a request gets back: one prediction per instance, in order.
pub(crate) type JobResult = Result<Vec<Prediction>, JobError>;

struct Job {
    inputs: Vec<Vec<u8>>,
    reply: oneshot::Sender<JobResult>,
}

struct QueueState {
    jobs: VecDeque<Job>,
    /// Instances in `jobs`, the unit of `capacity`.
    instances: usize,
    closed: bool,
}

struct Shared {
    state: Mutex<QueueState>,
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic while holding the lock cannot leave the queue inconsistent (each mutation is one step).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A bounded request queue and the thread that batches and runs it.
///
/// Dropping the queue closes it: requests already queued are still answered, then the thread exits
/// and the drop returns (so an unloaded version finishes its in-flight work).
pub(crate) struct BatchQueue {
    shared: Arc<Shared>,
    options: BatchOptions,
    thread: Option<JoinHandle<()>>,
    label: String,
}

/// Labels identifying a queue in metrics and logs.
#[derive(Debug, Clone)]
pub(crate) struct QueueLabels {
    pub(crate) model_name: String,
    pub(crate) version: u64,
}

impl BatchQueue {
    /// Starts the batch thread for `model`.
    pub(crate) fn start(
        model: Arc<Model>,
        options: BatchOptions,
        labels: QueueLabels,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<BatchQueue> {
        let shared = Arc::new(Shared {
            state: Mutex::new(QueueState { jobs: VecDeque::new(), instances: 0, closed: false }),
            ready: Condvar::new(),
        });
        let label = format!("{}:{}", labels.model_name, labels.version);
        let worker = BatchWorker { model, options: options.clone(), shared: shared.clone(), labels, metrics };
        let thread =
            std::thread::Builder::new().name(format!("batch-{label}")).spawn(move || worker.run())?;
        Ok(BatchQueue { shared, options, thread: Some(thread), label })
    }

    /// Most instances one request may carry (the queue's capacity), for checks made before the
    /// instances exist, such as a gRPC tensor that broadcasts one value over its shape.
    pub(crate) fn capacity(&self) -> usize {
        self.options.capacity
    }

    /// Queues a request's instances; the receiver yields its result. Refuses at once when the queue is full.
    pub(crate) fn submit(&self, inputs: Vec<Vec<u8>>) -> Result<oneshot::Receiver<JobResult>, ServeError> {
        let (reply, receiver) = oneshot::channel();
        let mut state = self.shared.lock();
        if state.closed {
            return Err(ServeError::Unavailable(format!("model {} is unloading", self.label)));
        }
        // A request the queue could never hold is the client's error, not load: retrying cannot help, and
        // running it would keep the batch thread busy long after the client's deadline.
        if inputs.len() > self.options.capacity {
            return Err(ServeError::InvalidArgument(format!(
                "Task size {} is larger than maximum input batch size {} (the most instances model {} queues); \
                 split the request",
                inputs.len(),
                self.options.capacity,
                self.label
            )));
        }
        if state.instances + inputs.len() > self.options.capacity {
            return Err(ServeError::ResourceExhausted(format!(
                "The batch scheduling queue to which this task was submitted is full: model {} has {} instances \
                 queued (capacity {}); retry later",
                self.label, state.instances, self.options.capacity
            )));
        }
        state.instances += inputs.len();
        state.jobs.push_back(Job { inputs, reply });
        drop(state);
        self.shared.ready.notify_one();
        Ok(receiver)
    }
}

impl Drop for BatchQueue {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(model = %self.label, "batch thread panicked");
        }
    }
}

struct BatchWorker {
    model: Arc<Model>,
    options: BatchOptions,
    shared: Arc<Shared>,
    labels: QueueLabels,
    metrics: Arc<Metrics>,
}

impl BatchWorker {
    fn run(self) {
        while let Some(batch) = self.next_batch() {
            let size: usize = batch.iter().map(|job| job.inputs.len()).sum();
            self.metrics.observe_batch(&self.labels.model_name, size);
            // A panic in the engine fails this batch's requests (their senders drop) but keeps the
            // queue serving.
            if std::panic::catch_unwind(AssertUnwindSafe(|| self.process(batch))).is_err() {
                tracing::error!(model = %self.labels.model_name, version = self.labels.version, "batch panicked");
            }
        }
    }

    /// Waits for the next batch; `None` once the queue is closed and drained.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let mut state = self.shared.lock();
        let mut batch: Vec<Job> = Vec::new();
        let mut size = 0;
        let mut deadline: Option<Instant> = None;
        loop {
            while let Some(front) = state.jobs.front() {
                if !batch.is_empty() && size + front.inputs.len() > self.options.max_batch_size {
                    return Some(self.take(state, batch));
                }
                let job = state.jobs.pop_front().expect("front exists");
                state.instances -= job.inputs.len();
                if job.reply.is_closed() {
                    self.metrics.count_abandoned(&self.labels.model_name);
                    continue;
                }
                size += job.inputs.len();
                batch.push(job);
                deadline.get_or_insert_with(|| Instant::now() + self.options.timeout);
                if size >= self.options.max_batch_size {
                    return Some(self.take(state, batch));
                }
            }
            if state.closed {
                return (!batch.is_empty()).then(|| self.take(state, batch));
            }
            match deadline {
                None => state = self.shared.ready.wait(state).unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Some(self.take(state, batch));
                    }
                    state = self
                        .shared
                        .ready
                        .wait_timeout(state, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    fn take(&self, state: std::sync::MutexGuard<'_, QueueState>, batch: Vec<Job>) -> Vec<Job> {
        self.metrics.set_queue_depth(&self.labels.model_name, self.labels.version, state.instances);
        batch
    }

    fn process(&self, batch: Vec<Job>) {
        let batch: Vec<Job> = batch.into_iter().filter(|job| !job.reply.is_closed()).collect();
        let inputs: Vec<&[u8]> = batch.iter().flat_map(|job| job.inputs.iter().map(Vec::as_slice)).collect();
        let mut prepared = self.prepare_all(&inputs).into_iter();
        let mut runnable = Vec::with_capacity(batch.len());
        let mut images: Vec<PreparedImage> = Vec::with_capacity(inputs.len());
        for job in batch {
            let results: Vec<Result<PreparedImage, InstanceError>> =
                prepared.by_ref().take(job.inputs.len()).collect();
            match results.iter().position(Result::is_err) {
                Some(index) => {
                    let error = results
                        .into_iter()
                        .nth(index)
                        .and_then(Result::err)
                        .expect("position found an error");
                    let _ = job.reply.send(Err(JobError::Instance { index, error }));
                }
                None => {
                    images.extend(results.into_iter().flatten());
                    runnable.push(job);
                }
            }
        }
        if runnable.is_empty() {
            return;
        }
        match self.model.infer(&images) {
            Ok(predictions) => {
                let mut predictions = predictions.into_iter();
                for job in runnable {
                    let mine: Vec<Prediction> = predictions.by_ref().take(job.inputs.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(error) => {
                tracing::error!(model = %self.labels.model_name, version = self.labels.version, "{error}");
                let error = ServeError::Internal(error.to_string());
                for job in runnable {
                    let _ = job.reply.send(Err(JobError::Request(error.clone())));
                }
            }
        }
    }

    /// Decodes and resizes every instance, spread over up to `decode_threads` scoped threads.
    fn prepare_all(&self, inputs: &[&[u8]]) -> Vec<Result<PreparedImage, InstanceError>> {
        let threads = self.options.decode_threads.clamp(1, inputs.len().max(1));
        if threads == 1 {
            return inputs.iter().map(|input| self.model.prepare(input)).collect();
        }
        let chunk = inputs.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = inputs
                .chunks(chunk)
                .map(|part| {
                    scope
                        .spawn(move || part.iter().map(|input| self.model.prepare(input)).collect::<Vec<_>>())
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        })
    }
}
