//! Thread-per-core plumbing shared by the sink and the engine: one monoio runtime per thread,
//! pinned to a core, io_uring or epoll.

mod connect;
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

/// Number of threads to use when the user did not say: one per available core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Starts thread `index` of `count`, pinned to a core (round robin), named `name-index`.
pub fn spawn_pinned<T, F>(name: &str, index: usize, f: F) -> io::Result<JoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let cores = default_threads();
    std::thread::Builder::new().name(format!("{name}-{index}")).spawn(move || {
        // Pinning is an optimisation: where it is refused (containers, cpusets) run unpinned.
        let _ = monoio::utils::bind_to_cpu_set([index % cores]);
        f()
    })
}
