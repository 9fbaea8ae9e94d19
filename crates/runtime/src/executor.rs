//! How kiln runs one image's plan on a tract executor's threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tract_linalg::multithread::{Executor, multithread_tract_scope};

/// How long a worker kept awake by [`run_on`] waits for work before it goes back to rayon's sleep:
/// longer than any gap between a ViT-B plan's parallel operations, short enough that a worker
/// another caller needs is not held for long.
const SPIN_IDLE: Duration = Duration::from_millis(1);

/// Runs `work` under `executor`, as [`crate::Model`] runs one image: for a thread pool, on one of
/// its workers (which then takes its share of every parallel operation itself), with the pool's
/// other workers spinning for the work each operation hands out instead of sleeping.
///
/// A rayon worker with nothing to do sleeps after a few dozen yields, and the next parallel
/// operation then waits for the OS to wake it: here a join of two 50 us halves took 84-127 us,
/// 51.5 us with the other worker spinning, and a ViT-B image on two threads runs about a hundred
/// parallel operations. Workers spin only while one call runs: a spinner may run on a worker inside
/// another caller's wait, which would then wait for the spinner, so spinners stop as soon as a
/// second call starts, when `work` ends (or panics), and after a millisecond without work.
pub fn run_on<R: Send>(executor: &Executor, work: impl FnOnce() -> R + Send) -> R {
    let scoped = || multithread_tract_scope(executor.clone(), work);
    let Executor::MultiThread(pool) = executor else { return scoped() };
    pool.install(|| {
        let running = Running::start();
        if running.alone {
            let caller = rayon::current_thread_index();
            let done = running.done.clone();
            pool.spawn_broadcast(move |worker| {
                if Some(worker.index()) != caller {
                    spin_until(&done);
                }
            });
        }
        scoped()
    })
}

/// Calls of [`run_on`] on a thread pool in progress, in the whole process.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// One call of [`run_on`] in progress: counted in [`RUNNING`] until dropped, when its spinners are
/// told to stop, even if the work panicked.
struct Running {
    /// Whether it was the only call when it started.
    alone: bool,
    done: Arc<AtomicBool>,
}

impl Running {
    fn start() -> Running {
        let alone = RUNNING.fetch_add(1, Ordering::AcqRel) == 0;
        Running { alone, done: Arc::new(AtomicBool::new(false)) }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
        RUNNING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs the pool's pending work as it comes until `done`, another call of [`run_on`] starts, or
/// [`SPIN_IDLE`] passes without any.
fn spin_until(done: &AtomicBool) {
    let mut idle_since = Instant::now();
    while !done.load(Ordering::Acquire) && RUNNING.load(Ordering::Acquire) == 1 {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => idle_since = Instant::now(),
            _ if idle_since.elapsed() > SPIN_IDLE => return,
            _ => std::hint::spin_loop(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The work runs on a worker of the pool, every parallel part of it is done, and the result
    /// comes back; on a single-thread executor it runs on the calling thread.
    #[test]
    fn work_runs_on_a_worker_and_completes() {
        let pool = Executor::multithread(2);
        let parts = AtomicUsize::new(0);
        let (index, sum) = run_on(&pool, || {
            let sum: usize = (0..64)
                .map(|i| {
                    let (a, b) = rayon::join(
                        || i,
                        || {
                            parts.fetch_add(1, Ordering::Relaxed);
                            i
                        },
                    );
                    a + b
                })
                .sum();
            (rayon::current_thread_index(), sum)
        });
        assert!(index.is_some());
        assert_eq!((sum, parts.load(Ordering::Relaxed)), (2 * (0..64).sum::<usize>(), 64));
        assert_eq!(run_on(&Executor::SingleThread, rayon::current_thread_index), None);
    }

    /// Two callers sharing a pool both finish: spinners give way as soon as a second call starts.
    #[test]
    fn two_callers_on_one_pool_both_finish() {
        let pool = Executor::multithread(2);
        let work = || run_on(&pool, || (0..200).map(|i| rayon::join(|| i, || i + 1).1).sum::<usize>());
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(work);
            let b = s.spawn(work);
            (a.join().expect("first caller"), b.join().expect("second caller"))
        });
        assert_eq!((a, b), (20_100, 20_100));
    }
}
