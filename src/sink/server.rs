//! The sink's I/O driver: a listener per thread on one address (SO_REUSEPORT), a task per
//! connection running [`Session`]. Thin on purpose: all decisions are the session's.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::io::{AsyncWriteRent, AsyncWriteRentExt, Canceller};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

use super::session::{Action, Session};
use super::{Core, Counters, Shared, SinkConfig};
use crate::rt::{self, ReadOutcome, Watch, Watchdog};

/// How often an idle accept loop looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);
/// A connection's first read buffer: enough for a pipelined group of commands. It doubles each
/// time a read fills it (bulk content), so idle connections stay small.
const FIRST_READ: usize = 1024;
const MAX_READ: usize = 64 * 1024;
/// How long a closing connection's input is drained (see [`close_gracefully`]).
const LINGER: Duration = Duration::from_secs(2);

/// A running sink.
pub struct SinkHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<io::Result<Counters>>>,
}

impl SinkHandle {
    /// The address it listens on (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop_requested(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    pub fn request_stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }

    /// Stops accepting, ends every thread and returns the merged counters.
    pub fn stop(self) -> io::Result<Counters> {
        self.request_stop();
        self.join()
    }

    /// Waits for the sink to stop by itself (`exit_after_messages`, or `request_stop`).
    pub fn join(self) -> io::Result<Counters> {
        let mut total = Counters::default();
        for t in self.threads {
            let counters = t.join().map_err(|_| io::Error::other("sink thread panicked"))??;
            total.merge(&counters);
        }
        Ok(total)
    }
}

/// Starts the sink's threads and returns once every one of them is listening.
pub fn start(config: SinkConfig) -> io::Result<SinkHandle> {
    let config = Arc::new(config);
    let shared = Arc::new(Shared::default());
    let mut threads = Vec::new();
    let mut addr = config.listen;
    for index in 0..config.threads.max(1) {
        let (tx, rx) = mpsc::channel();
        let (thread_config, thread_shared) = (Arc::clone(&config), Arc::clone(&shared));
        threads.push(rt::spawn_pinned("sink", index, move || {
            let driver = thread_config.driver;
            rt::block_on(driver, run_thread(thread_config, thread_shared, index, addr, tx))?
        })?);
        // Thread 0 learns the port; the others bind the same one.
        match rx.recv() {
            Ok(Ok(bound)) => addr = bound,
            Ok(Err(e)) => {
                shared.stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
            Err(_) => {
                shared.stop.store(true, Ordering::Relaxed);
                let joined = threads.pop().map(|t| t.join());
                return Err(match joined {
                    Some(Ok(Err(e))) => e,
                    _ => io::Error::other("sink thread failed to start"),
                });
            }
        }
    }
    Ok(SinkHandle { addr, shared, threads })
}

async fn run_thread(
    config: Arc<SinkConfig>,
    shared: Arc<Shared>,
    index: usize,
    addr: SocketAddr,
    ready: mpsc::Sender<io::Result<SocketAddr>>,
) -> io::Result<Counters> {
    let opts = ListenerOpts::new().reuse_port(true).reuse_addr(true).backlog(4096);
    let listener = match TcpListener::bind_with_config(addr, &opts).and_then(|l| Ok((l.local_addr()?, l))) {
        Ok((bound, l)) => {
            let _ = ready.send(Ok(bound));
            l
        }
        Err(e) => {
            let _ = ready.send(Err(io::Error::new(e.kind(), format!("listen on {addr}: {e}"))));
            return Err(e);
        }
    };
    let idle = config.idle_timeout;
    let core = Rc::new(RefCell::new(Core::new(config, Arc::clone(&shared), index)));
    let watchdog = Watchdog::new();
    let tick = (idle / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let sweeper_stop = Arc::clone(&shared);
    monoio::spawn(Rc::clone(&watchdog).run(tick, move || sweeper_stop.stop.load(Ordering::Relaxed)));
    let mut conn_seq = (index as u64) << 40;
    while !shared.stop.load(Ordering::Relaxed) {
        let canceller = Canceller::new();
        let accept = listener.cancelable_accept(canceller.handle());
        let mut accept = std::pin::pin!(accept);
        let tick = monoio::time::sleep(STOP_POLL);
        let mut tick = std::pin::pin!(tick);
        let accepted = monoio::select! {
            r = &mut accept => r,
            _ = &mut tick => {
                // Cancel, then take whatever the accept completed with: a connection that
                // arrived at this instant is served, not dropped.
                let _cancelled = canceller.cancel();
                accept.await
            }
        };
        match accepted {
            Ok((stream, _peer)) => {
                conn_seq += 1;
                let watch = watchdog.watch();
                monoio::spawn(serve(stream, Rc::clone(&core), Arc::clone(&shared), watch, conn_seq));
            }
            Err(e) if e.raw_os_error() == Some(125) => {}
            // Out of descriptors and the like: back off rather than spin.
            Err(_) => monoio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    let counters = core.borrow().counters.clone();
    Ok(counters)
}

/// Decrements the active-connection count however the task ends.
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve(
    mut stream: TcpStream,
    core: Rc<RefCell<Core>>,
    shared: Arc<Shared>,
    watch: Rc<Watch>,
    conn: u64,
) {
    let _ = stream.set_nodelay(true);
    let active = shared.active_connections.fetch_add(1, Ordering::Relaxed) + 1;
    let _guard = ActiveGuard(shared);
    let mut session = Session::new(conn);
    let idle = core.borrow().config.idle_timeout;
    let mut out = Vec::with_capacity(256);
    let mut action = session.greet(&mut core.borrow_mut(), active, &mut out);
    loop {
        let (ok, o) = act(&mut stream, out, action).await;
        out = o;
        if !ok {
            close_gracefully(&mut stream, &watch).await;
            return;
        }
        if action == Action::Continue {
            break;
        }
        // A delayed greeting: the wait is over, now send it.
        action = Action::Continue;
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut read_size = FIRST_READ;
    let mut start = 0;
    loop {
        let spare = buf.capacity() - buf.len();
        let (res, b) = watch.read(&mut stream, buf, read_size, Some(Instant::now() + idle)).await;
        buf = b;
        match res {
            Ok(ReadOutcome::Data(n)) => {
                if n >= spare.max(read_size) && read_size < MAX_READ {
                    read_size *= 2;
                }
            }
            Ok(ReadOutcome::Deadline) => {
                core.borrow_mut().counters.idle_timeouts += 1;
                out.clear();
                out.extend_from_slice(b"421 4.4.2 Idle timeout, closing connection\r\n");
                core.borrow_mut().counters.reply(421);
                let _ = stream.write_all(out).await;
                close_gracefully(&mut stream, &watch).await;
                break;
            }
            Ok(ReadOutcome::Eof) | Err(_) => break,
        }
        loop {
            let (consumed, action) = session.process(&mut core.borrow_mut(), &buf[start..], &mut out);
            start += consumed;
            let (ok, o) = act(&mut stream, out, action).await;
            out = o;
            if !ok {
                session.closed(&mut core.borrow_mut());
                close_gracefully(&mut stream, &watch).await;
                return;
            }
            if !matches!(action, Action::Delay { .. }) {
                break;
            }
        }
        // Keep only the unconsumed tail (a partial command line, at most 512 bytes).
        if start == buf.len() {
            buf.clear();
        } else {
            buf.drain(..start);
        }
        start = 0;
    }
    session.closed(&mut core.borrow_mut());
}

/// Closes the way a careful server does: FIN after the last reply, then input drained for a
/// while. Closing with unread input (a client pipelines past our 421) makes the kernel send RST,
/// and an RST can destroy replies still in flight to the client: a 250 it never reads becomes a
/// retry, and a duplicate message.
async fn close_gracefully(stream: &mut TcpStream, watch: &Watch) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut sink = Vec::with_capacity(FIRST_READ);
    loop {
        sink.clear();
        let (res, b) = watch.read(stream, sink, FIRST_READ, Some(deadline)).await;
        sink = b;
        if !matches!(res, Ok(ReadOutcome::Data(_))) {
            return;
        }
    }
}

/// Carries out an [`Action`]: writes what is due, waits for a delay. Returns whether the
/// connection stays open, and the output buffer (emptied of what was written).
async fn act(stream: &mut TcpStream, mut out: Vec<u8>, action: Action) -> (bool, Vec<u8>) {
    match action {
        Action::Continue | Action::Close => {
            if !out.is_empty() {
                let (res, o) = stream.write_all(out).await;
                out = o;
                out.clear();
                if res.is_err() {
                    return (false, out);
                }
            }
            (action == Action::Continue, out)
        }
        Action::Delay { at, by } => {
            if at > 0 {
                let rest = out.split_off(at);
                let (res, o) = stream.write_all(out).await;
                out = o;
                out.clear();
                out.extend_from_slice(&rest);
                if res.is_err() {
                    return (false, out);
                }
            }
            monoio::time::sleep(by).await;
            (true, out)
        }
    }
}
