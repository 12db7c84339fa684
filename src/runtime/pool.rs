//! A tiny persistent thread pool for one compiled model: `n − 1` workers
//! plus the calling thread run one job at a time, and a spin-then-yield barrier
//! separates the layers of a run split within layers.
//!
//! Workers spin briefly after a job (back-to-back runs hand over in
//! microseconds) and then sleep on a condition variable, so an idle model
//! costs no CPU.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A job: called once on every thread with the thread's index.
type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Incremented for every job.
    generation: AtomicUsize,
    /// Workers that finished the current job.
    done: AtomicUsize,
    stop: AtomicBool,
    /// The current job, valid while a `run` is in progress.
    job: UnsafeCell<Option<*const Job>>,
    sleep: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by `Pool::run` while no worker reads it
// (before the generation bump that publishes it, after all workers reported
// done), and the job itself is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced during `run`.
unsafe impl Send for Shared {}

/// The pool.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One run at a time.
    busy: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} threads)", self.threads())
    }
}

const SPIN: Duration = Duration::from_micros(200);

impl Pool {
    /// A pool of `threads` threads in total (the caller counts as one). An
    /// error if the OS refuses a thread; those already started are stopped.
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            job: UnsafeCell::new(None),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut pool = Pool {
            shared,
            workers: Vec::with_capacity(threads.saturating_sub(1)),
            busy: Mutex::new(()),
        };
        for t in 1..threads.max(1) {
            let s = Arc::clone(&pool.shared);
            // `Builder::spawn` returns the OS's refusal; `thread::spawn`
            // would panic. Dropping `pool` stops the workers started so far.
            let w = std::thread::Builder::new().spawn(move || worker(&s, t))?;
            pool.workers.push(w);
        }
        Ok(pool)
    }

    /// Threads in total.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `job(t)` for every thread `t`, the caller being thread 0; returns
    /// false without running anything if another run holds the pool.
    pub fn run<'j>(&self, job: &'j (dyn Fn(usize) + Sync + 'j)) -> bool {
        let Ok(_guard) = self.busy.try_lock() else {
            return false;
        };
        // SAFETY: the lifetime is erased only for the duration of this call:
        // every worker finishes the job before we return (the wait below),
        // and `job` is cleared before the guard is released.
        let ptr: *const Job =
            unsafe { std::mem::transmute::<&'j (dyn Fn(usize) + Sync + 'j), &'static Job>(job) };
        // SAFETY: no worker reads `job` now: the previous run waited for all.
        unsafe { *self.shared.job.get() = Some(ptr) };
        self.shared.done.store(0, Ordering::Release);
        {
            let _l = self.shared.sleep.lock();
            self.shared.generation.fetch_add(1, Ordering::AcqRel);
            self.shared.wake.notify_all();
        }
        job(0);
        let n = self.workers.len();
        let mut spins = 0u32;
        while self.shared.done.load(Ordering::Acquire) < n {
            backoff(&mut spins);
        }
        // SAFETY: all workers are done with the job.
        unsafe { *self.shared.job.get() = None };
        true
    }
}

fn worker(s: &Shared, t: usize) {
    let mut seen = 0usize;
    loop {
        let start = Instant::now();
        loop {
            if s.stop.load(Ordering::Acquire) {
                return;
            }
            if s.generation.load(Ordering::Acquire) != seen {
                break;
            }
            if start.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                let mut g = s.sleep.lock().unwrap_or_else(|e| e.into_inner());
                while s.generation.load(Ordering::Acquire) == seen
                    && !s.stop.load(Ordering::Acquire)
                {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
        seen = s.generation.load(Ordering::Acquire);
        // SAFETY: `run` published the job before bumping the generation and
        // keeps it alive until this worker increments `done`.
        if let Some(job) = unsafe { *s.job.get() } {
            // SAFETY: see above.
            unsafe { (*job)(t) };
        }
        s.done.fetch_add(1, Ordering::AcqRel);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        {
            let _l = self.shared.sleep.lock();
            self.shared.stop.store(true, Ordering::Release);
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Spins `SPIN_TRIES` times, then yields the core on every call: on a
/// shared machine the thread being waited for may have been preempted, and
/// spinning through its time slice costs milliseconds per barrier.
fn backoff(spins: &mut u32) {
    const SPIN_TRIES: u32 = 4096;
    if *spins < SPIN_TRIES {
        *spins += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// A sense-counting spin barrier for `n` threads.
pub struct Barrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
}

impl Barrier {
    /// A barrier for `n` threads.
    pub fn new(n: usize) -> Barrier {
        Barrier {
            n,
            count: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    /// Waits until all `n` threads arrived.
    pub fn wait(&self) {
        let g = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Release);
            self.generation.fetch_add(1, Ordering::AcqRel);
        } else {
            let mut spins = 0u32;
            while self.generation.load(Ordering::Acquire) == g {
                backoff(&mut spins);
            }
        }
    }
}
