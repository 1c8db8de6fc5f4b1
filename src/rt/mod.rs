//! Thread-per-core plumbing shared by the sink and the engine: one monoio runtime per thread,
//! pinned to a core, io_uring or epoll.

mod connect;
pub mod http;
pub mod http_client;
mod iovec;
mod read;

use std::future::Future;
use std::io;
use std::thread::JoinHandle;

use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

pub use connect::connect;
pub use iovec::TransmitBuf;
pub use read::{ReadOutcome, Watch, Watchdog};

/// Which monoio I/O driver to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Driver {
    /// io_uring when the kernel allows it, epoll otherwise.
    #[default]
    Auto,
    Uring,
    Epoll,
}

impl Driver {
    /// The driver `Auto` resolves to on this machine.
    pub fn resolve(self) -> Driver {
        match self {
            Driver::Auto if monoio::utils::detect_uring() => Driver::Uring,
            Driver::Auto => Driver::Epoll,
            other => other,
        }
    }

    pub fn name(self) -> &'static str {
        match self.resolve() {
            Driver::Uring => "io_uring",
            _ => "epoll",
        }
    }
}

/// Submission queue size: room for every connection's read and write on a busy core.
const URING_ENTRIES: u32 = 4096;

/// Runs `fut` to completion on a new runtime of the chosen driver, on this thread.
pub fn block_on<F: Future>(driver: Driver, fut: F) -> io::Result<F::Output> {
    match driver.resolve() {
        Driver::Uring => {
            // One thread owns each ring, so completions need not interrupt it: cooperative task
            // running saves an inter-processor interrupt per completion.
            let mut ring = io_uring::IoUring::builder();
            ring.setup_coop_taskrun();
            let mut rt = RuntimeBuilder::<IoUringDriver>::new()
                .with_entries(URING_ENTRIES)
                .uring_builder(ring)
                .enable_timer()
                .build()?;
            Ok(rt.block_on(fut))
        }
        _ => {
            let mut rt = RuntimeBuilder::<LegacyDriver>::new().enable_timer().build()?;
            Ok(rt.block_on(fut))
        }
    }
}

/// The open-files limit: (soft, hard), or `None` if the kernel will not say.
fn open_files() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one plain struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0)
        .then_some((limit.rlim_cur, limit.rlim_max))
}

/// Raises the open-files limit to what the system allows (the hard limit): a sender to many
/// destinations holds a descriptor per session, and the usual soft limit is 1024. The
/// process's business, so `main` does it once at start.
pub fn raise_open_files() {
    if let Some((_, hard)) = open_files().filter(|(soft, hard)| soft < hard) {
        let raised = libc::rlimit { rlim_cur: hard, rlim_max: hard };
        // SAFETY: setrlimit reads one plain struct we own. Refused: the soft limit stays.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
    }
}

/// Sessions per core for a sender running `threads` cores: `wanted`, or fewer if the
/// open-files limit in force leaves less, with 256 descriptors kept for the rest (the log, DNS,
/// the sink in a test).
pub fn sessions_per_core(wanted: usize, threads: usize) -> usize {
    let files = open_files().map_or(1024, |(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX));
    wanted.min(files.saturating_sub(256) / threads.max(1)).max(16)
}

/// Number of threads to use when the user did not say: one per available core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Starts thread `index`, named `name-index`, pinned to one of the cores this thread may run on
/// (round robin over them). Pinning among the *allowed* cores, not core `index` itself, keeps
/// `taskset -c 1 volley sink` on core 1: pinning to core 0 would put it beside a client given
/// core 0, and every benchmark would measure both on one core.
pub fn spawn_pinned<T, F>(name: &str, index: usize, f: F) -> io::Result<JoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let core = allowed_cpus().and_then(|cpus| cpus.get(index % cpus.len().max(1)).copied());
    std::thread::Builder::new().name(format!("{name}-{index}")).spawn(move || {
        // Pinning is an optimisation: where it is refused (containers, cpusets) or the allowed
        // set is unknown, the thread keeps the affinity it inherited.
        if let Some(core) = core {
            let _ = monoio::utils::bind_to_cpu_set([core]);
        }
        f()
    })
}

/// The CPUs the calling thread may run on, in order; `None` if the kernel will not say.
pub fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most
    // size_of::<cpu_set_t>() bytes into it, and CPU_ISSET reads within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        let cpus: Vec<usize> =
            (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect();
        (!cpus.is_empty()).then_some(cpus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_affinity(cpus: &[usize]) {
        // SAFETY: as in allowed_cpus; CPU_SET writes within the set for c < CPU_SETSIZE.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in cpus {
                libc::CPU_SET(c, &mut set);
            }
            assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0);
        }
    }

    /// Regression: under `taskset -c 1`, thread 0 was pinned to core 0 (`index % cores`),
    /// putting the sink on the client's core in every pinned benchmark.
    #[test]
    fn pinned_threads_stay_within_the_cores_allowed() {
        let all = allowed_cpus().expect("sched_getaffinity");
        // The test runs on its own thread: narrowing its affinity touches no other test.
        let last = *all.last().expect("a CPU");
        set_affinity(&[last]);
        for index in 0..3 {
            let seen = spawn_pinned("pin-test", index, allowed_cpus).unwrap().join().unwrap();
            assert_eq!(seen, Some(vec![last]), "thread {index}");
        }
        if all.len() > 1 {
            // Round robin over the allowed cores, in order.
            set_affinity(&all);
            let seen = spawn_pinned("pin-test", all.len() + 1, allowed_cpus).unwrap().join().unwrap();
            assert_eq!(seen, Some(vec![all[1]]));
        }
    }
}
