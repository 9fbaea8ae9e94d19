//! The batching queue of one model version: requests in, one reply each, model work on its own thread.
//!
//! Like text-embeddings-inference, a bounded queue feeds one dedicated OS thread that owns the batching
//! loop: it takes the first waiting request, keeps adding requests until `max_batch_size` instances or
//! `batch_timeout` is reached, decodes and resizes the batch's images on the decode threads, runs the
//! graph once, and answers each request on its own oneshot channel. Requests whose deadline has passed
//! or whose client has gone are dropped before any work is spent on them (and again between decoding and
//! the graph run), and counted in `kiln_cancelled_requests_total`; a full queue first drops those it holds,
//! then refuses new requests at once ([`ServeError::ResourceExhausted`]) so overload never grows memory or
//! latency without bound, and requests nobody waits for never turn live ones away. The async executor only
//! enqueues and awaits.
//!
//! Threads outlive model versions, so memory stays flat across reloads: with glibc each thread that
//! allocates holds a malloc arena, and an arena keeps its largest free block (up to twice the largest
//! buffer freed so far, 30 MiB after one 2400x2093 image) rather than returning it. Images are decoded
//! on one pool per thread count for the whole process, so the decode buffers land in the same few
//! arenas whichever version runs; and a batch thread whose version was unloaded waits for the next
//! queue, so a version swap starts no thread. Decoding on each version's own thread instead left one
//! more arena holding a full-size decode buffer (17 MiB for that image) after every few swaps.

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use rayon::ThreadPool;
use rayon::iter::{IntoParallelRefIterator, ParallelIterator};
use runtime::{InstanceError, Model, Prediction, PreparedImage};
use tokio::sync::oneshot;

use crate::error::ServeError;
use crate::metrics::{Cancelled, Metrics};

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
    /// Threads decoding batches' images; every queue with the same count shares them.
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
    /// When the client stops waiting; the job is dropped unrun after it.
    deadline: Option<Instant>,
}

impl Job {
    /// Why this job is no longer worth running at `now`, if it is not.
    fn cancelled(&self, now: Instant) -> Option<Cancelled> {
        if self.deadline.is_some_and(|deadline| deadline <= now) {
            Some(Cancelled::DeadlineExceeded)
        } else if self.reply.is_closed() {
            Some(Cancelled::ClientGone)
        } else {
            None
        }
    }
}

struct QueueState {
    jobs: VecDeque<Job>,
    /// Instances in `jobs`, the unit of `capacity`.
    instances: usize,
    closed: bool,
    /// Set by the batch thread once the queue is closed, drained and its model released.
    finished: bool,
}

/// What [`QueueState::admit`] did with a job.
struct Admission {
    /// Queued jobs swept out to make room, to be answered once the lock is released.
    removed: Vec<(Job, Cancelled)>,
    /// Instances queued before the job.
    queued: usize,
    /// Whether the job was queued; a refused job is dropped.
    accepted: bool,
}

impl QueueState {
    /// Queues `job` if its instances fit in `capacity`; when they do not, first sweeps out the jobs no
    /// longer worth running, so requests nobody waits for never turn live ones away. The sweep is a pass
    /// over the queue, paid only when it is full.
    fn admit(&mut self, job: Job, capacity: usize, now: Instant) -> Admission {
        let fits = |state: &QueueState| state.instances + job.inputs.len() <= capacity;
        let removed = if fits(self) { vec![] } else { self.remove_cancelled(now) };
        let queued = self.instances;
        let accepted = fits(self);
        if accepted {
            self.instances += job.inputs.len();
            self.jobs.push_back(job);
        }
        Admission { removed, queued, accepted }
    }

    /// Takes the queued jobs no longer worth running at `now` out of the queue, with why.
    fn remove_cancelled(&mut self, now: Instant) -> Vec<(Job, Cancelled)> {
        let mut removed = vec![];
        for job in std::mem::take(&mut self.jobs) {
            match job.cancelled(now) {
                Some(reason) => {
                    self.instances -= job.inputs.len();
                    removed.push((job, reason));
                }
                None => self.jobs.push_back(job),
            }
        }
        removed
    }
}

/// What a queue and its batch thread share.
struct Shared {
    state: Mutex<QueueState>,
    ready: Condvar,
    /// Signalled when `finished` is set.
    done: Condvar,
    labels: QueueLabels,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic while holding the lock cannot leave the queue inconsistent (each mutation is one step).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers a job that will not run (when someone may still read the answer) and counts it.
    fn cancel(&self, job: Job, reason: Cancelled) {
        self.metrics.count_cancelled(&self.labels.model_name, reason);
        if reason == Cancelled::DeadlineExceeded {
            let _ = job.reply.send(Err(JobError::Request(ServeError::DeadlineExceeded(format!(
                "Deadline exceeded: the request's deadline passed before model {}:{} ran it",
                self.labels.model_name, self.labels.version
            )))));
        }
    }

    fn set_queue_depth(&self, instances: usize) {
        self.metrics.set_queue_depth(&self.labels.model_name, self.labels.version, instances);
    }
}

/// A bounded request queue and the thread that batches and runs it.
///
/// Dropping the queue closes it: requests already queued are still answered, then the thread releases
/// the model and the drop returns (so an unloaded version finishes its in-flight work); the thread
/// itself waits for the next queue.
pub(crate) struct BatchQueue {
    shared: Arc<Shared>,
    options: BatchOptions,
    label: String,
}

/// Labels identifying a queue in metrics and logs.
#[derive(Debug, Clone)]
pub(crate) struct QueueLabels {
    pub(crate) model_name: String,
    pub(crate) version: u64,
}

impl BatchQueue {
    /// Starts batching for `model` on an idle batch thread, or a new one when none is idle.
    pub(crate) fn start(
        model: Arc<Model>,
        options: BatchOptions,
        labels: QueueLabels,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<BatchQueue> {
        let shared = Arc::new(Shared {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                instances: 0,
                closed: false,
                finished: false,
            }),
            ready: Condvar::new(),
            done: Condvar::new(),
            labels,
            metrics,
        });
        let label = format!("{}:{}", shared.labels.model_name, shared.labels.version);
        let decode = decode_pool(options.decode_threads)?;
        let worker = BatchWorker { model, options: options.clone(), shared: shared.clone(), decode };
        run_on_batch_thread(worker)?;
        Ok(BatchQueue { shared, options, label })
    }

    /// Most instances one request may carry (the queue's capacity), for checks made before the
    /// instances exist, such as a gRPC tensor that broadcasts one value over its shape.
    pub(crate) fn capacity(&self) -> usize {
        self.options.capacity
    }

    /// Queues a request's instances; the receiver yields its result. Refuses at once when the queue is full.
    /// A request still queued (or decoded but not yet run) at `deadline` is dropped unrun.
    pub(crate) fn submit(
        &self,
        inputs: Vec<Vec<u8>>,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<JobResult>, ServeError> {
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
        let Admission { removed, queued, accepted } =
            state.admit(Job { inputs, reply, deadline }, self.options.capacity, Instant::now());
        let depth = state.instances;
        drop(state);
        if !removed.is_empty() {
            self.shared.set_queue_depth(depth);
            for (job, reason) in removed {
                self.shared.cancel(job, reason);
            }
        }
        if !accepted {
            return Err(ServeError::ResourceExhausted(format!(
                "The batch scheduling queue to which this task was submitted is full: model {} has {queued} \
                 instances queued (capacity {}); retry later",
                self.label, self.options.capacity
            )));
        }
        self.shared.ready.notify_one();
        Ok(receiver)
    }
}

impl Drop for BatchQueue {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        self.shared.ready.notify_all();
        drop(self.shared.done.wait_while(state, |s| !s.finished).unwrap_or_else(PoisonError::into_inner));
    }
}

/// The process's pool of `threads` decode threads (at least one), started on first use.
fn decode_pool(threads: usize) -> std::io::Result<Arc<ThreadPool>> {
    static POOLS: Mutex<BTreeMap<usize, Arc<ThreadPool>>> = Mutex::new(BTreeMap::new());
    let threads = threads.max(1);
    // A panic while holding the lock cannot leave the map half-updated (one insert).
    let mut pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(pool) = pools.get(&threads) {
        return Ok(pool.clone());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(move |index| format!("kiln-decode{threads}-{index}"))
        .build()
        .map_err(|e| std::io::Error::other(format!("cannot start {threads} decode threads: {e}")))?;
    let pool = Arc::new(pool);
    pools.insert(threads, pool.clone());
    Ok(pool)
}

/// Senders to batch threads waiting for a queue to run.
static IDLE_BATCH_THREADS: Mutex<Vec<mpsc::Sender<BatchWorker>>> = Mutex::new(Vec::new());

/// Hands `worker` to an idle batch thread, or starts one.
fn run_on_batch_thread(mut worker: BatchWorker) -> std::io::Result<()> {
    loop {
        let idle = IDLE_BATCH_THREADS.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let Some(idle) = idle else { break };
        match idle.send(worker) {
            Ok(()) => return Ok(()),
            // Each thread keeps its own sender, so it never leaves; should one have, try another.
            Err(mpsc::SendError(back)) => worker = back,
        }
    }
    let (sender, inbox) = mpsc::channel();
    std::thread::Builder::new().name("kiln-batch".into()).spawn(move || {
        let mut next = Some(worker);
        while let Some(worker) = next {
            let shared = worker.shared.clone();
            let label = format!("{}:{}", shared.labels.model_name, shared.labels.version);
            if std::panic::catch_unwind(AssertUnwindSafe(|| worker.run())).is_err() {
                tracing::error!(model = %label, "batch thread panicked");
            }
            // Idle before the queue's drop returns, so the next version's queue finds this thread.
            IDLE_BATCH_THREADS.lock().unwrap_or_else(PoisonError::into_inner).push(sender.clone());
            shared.lock().finished = true;
            shared.done.notify_all();
            next = inbox.recv().ok();
        }
    })?;
    Ok(())
}

struct BatchWorker {
    model: Arc<Model>,
    options: BatchOptions,
    shared: Arc<Shared>,
    decode: Arc<ThreadPool>,
}

impl BatchWorker {
    fn run(self) {
        while let Some(batch) = self.next_batch() {
            // A panic in the engine fails this batch's requests (their senders drop) but keeps the
            // queue serving.
            if std::panic::catch_unwind(AssertUnwindSafe(|| self.process(batch))).is_err() {
                let labels = &self.shared.labels;
                tracing::error!(model = %labels.model_name, version = labels.version, "batch panicked");
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
                let cancelled = front.cancelled(Instant::now());
                if cancelled.is_none()
                    && !batch.is_empty()
                    && size + front.inputs.len() > self.options.max_batch_size
                {
                    return Some(self.take(state, batch));
                }
                let job = state.jobs.pop_front().expect("front exists");
                state.instances -= job.inputs.len();
                if let Some(reason) = cancelled {
                    self.shared.cancel(job, reason);
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
        self.shared.set_queue_depth(state.instances);
        batch
    }

    /// The job back if it is still worth running at `now`; otherwise it is cancelled.
    fn keep(&self, job: Job, now: Instant) -> Option<Job> {
        match job.cancelled(now) {
            None => Some(job),
            Some(reason) => {
                self.shared.cancel(job, reason);
                None
            }
        }
    }

    fn process(&self, batch: Vec<Job>) {
        // The batch may have waited `batch_timeout` for company: check again before decoding.
        let now = Instant::now();
        let batch: Vec<Job> = batch.into_iter().filter_map(|job| self.keep(job, now)).collect();
        let inputs: Vec<&[u8]> = batch.iter().flat_map(|job| job.inputs.iter().map(Vec::as_slice)).collect();
        let mut prepared = self.prepare_all(&inputs).into_iter();
        let mut decoded: Vec<(Job, Vec<PreparedImage>)> = Vec::with_capacity(batch.len());
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
                None => decoded.push((job, results.into_iter().flatten().collect())),
            }
        }
        // Decoding large images takes long enough for deadlines to pass; the graph run is the dearest step.
        let now = Instant::now();
        let (runnable, images): (Vec<Job>, Vec<Vec<PreparedImage>>) =
            decoded.into_iter().filter_map(|(job, images)| Some((self.keep(job, now)?, images))).unzip();
        if runnable.is_empty() {
            return;
        }
        let images: Vec<PreparedImage> = images.into_iter().flatten().collect();
        self.shared.metrics.observe_batch(&self.shared.labels.model_name, images.len());
        match self.model.infer(&images) {
            Ok(predictions) => {
                let mut predictions = predictions.into_iter();
                for job in runnable {
                    let mine: Vec<Prediction> = predictions.by_ref().take(job.inputs.len()).collect();
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(error) => {
                let labels = &self.shared.labels;
                tracing::error!(model = %labels.model_name, version = labels.version, "{error}");
                let error = ServeError::Internal(error.to_string());
                for job in runnable {
                    let _ = job.reply.send(Err(JobError::Request(error.clone())));
                }
            }
        }
    }

    /// Decodes and resizes every instance on the decode pool, in order.
    fn prepare_all(&self, inputs: &[&[u8]]) -> Vec<Result<PreparedImage, InstanceError>> {
        self.decode.install(|| inputs.par_iter().map(|input| self.model.prepare(input)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job of `instances` instances, and the receiver its client waits on.
    fn job(instances: usize, deadline: Option<Instant>) -> (Job, oneshot::Receiver<JobResult>) {
        let (reply, receiver) = oneshot::channel();
        (Job { inputs: vec![vec![0xff, 0xd8]; instances], reply, deadline }, receiver)
    }

    fn queue(jobs: Vec<Job>) -> QueueState {
        let instances = jobs.iter().map(|job| job.inputs.len()).sum();
        QueueState { jobs: jobs.into(), instances, closed: false, finished: false }
    }

    fn sizes(state: &QueueState) -> Vec<usize> {
        state.jobs.iter().map(|job| job.inputs.len()).collect()
    }

    #[test]
    fn a_full_queue_sweeps_out_the_requests_nobody_waits_for_before_refusing() {
        let now = Instant::now();
        let (expired, _expired_client) = job(3, Some(now));
        let (abandoned, abandoned_client) = job(1, None);
        drop(abandoned_client);
        let (live, _live_client) = job(2, Some(now + Duration::from_secs(60)));
        let (patient, _patient_client) = job(4, None);
        let mut state = queue(vec![live, expired, abandoned, patient]);
        let (new, _new_client) = job(2, None);

        let admission = state.admit(new, 10, now);

        assert!(admission.accepted);
        assert_eq!(admission.queued, 6, "instances still queued before the new job");
        let reasons: Vec<Cancelled> = admission.removed.iter().map(|(_, reason)| *reason).collect();
        assert_eq!(reasons, [Cancelled::DeadlineExceeded, Cancelled::ClientGone]);
        assert_eq!(sizes(&state), [2, 4, 2], "live jobs keep their order, the new one last");
        assert_eq!(state.instances, 8);
    }

    #[test]
    fn a_queue_full_of_live_requests_refuses_and_keeps_them() {
        let now = Instant::now();
        let (first, _first_client) = job(6, Some(now + Duration::from_secs(1)));
        let (second, _second_client) = job(3, None);
        let mut state = queue(vec![first, second]);
        let (new, mut new_client) = job(2, None);

        let admission = state.admit(new, 10, now);

        assert!(!admission.accepted);
        assert!(admission.removed.is_empty());
        assert_eq!(admission.queued, 9);
        assert_eq!(sizes(&state), [6, 3]);
        assert_eq!(state.instances, 9);
        assert!(
            matches!(new_client.try_recv(), Err(oneshot::error::TryRecvError::Closed)),
            "the refused job is dropped unanswered (the caller answers its client)"
        );
    }

    #[test]
    fn a_queue_with_room_queues_without_sweeping() {
        let now = Instant::now();
        let (expired, _expired_client) = job(1, Some(now));
        let mut state = queue(vec![expired]);
        let (new, _new_client) = job(2, None);

        let admission = state.admit(new, 10, now);

        assert!(admission.accepted);
        assert!(admission.removed.is_empty(), "the batch thread drops expired jobs when it reaches them");
        assert_eq!(sizes(&state), [1, 2]);
        assert_eq!(state.instances, 3);
    }
}
