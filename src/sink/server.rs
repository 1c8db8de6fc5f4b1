//! The sink's I/O driver: a listener per thread on one address (SO_REUSEPORT), a task per
//! connection running [`Session`]. Thin on purpose: all decisions are the session's.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use monoio::io::Canceller;
use monoio::net::{ListenerOpts, TcpListener, TcpStream};

use super::session::{Action, Session};
use super::store::Stored;
use super::{Core, Counters, Shared, SinkConfig};
use crate::rt::{self, ReadOutcome, Watch, Watchdog};
use crate::tls::{Conn, TlsLayer};

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
    tls_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<io::Result<Counters>>>,
}

impl SinkHandle {
    /// The address it listens on (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The implicit-TLS listener's address, when there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    pub fn stop_requested(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    /// The most connections that were open at once.
    pub fn peak_connections(&self) -> usize {
        self.shared.peak_connections.load(Ordering::Relaxed)
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
    if (config.starttls || config.tls_listen.is_some()) && config.tls.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "STARTTLS or a TLS listener needs a certificate",
        ));
    }
    let config = Arc::new(config);
    let shared = Arc::new(Shared::default());
    let mut threads = Vec::new();
    let mut addrs = Addrs { plain: config.listen, tls: config.tls_listen };
    for index in 0..config.threads.max(1) {
        let (tx, rx) = mpsc::channel();
        let (thread_config, thread_shared) = (Arc::clone(&config), Arc::clone(&shared));
        threads.push(rt::spawn_pinned("sink", index, move || {
            let driver = thread_config.driver;
            rt::block_on(driver, run_thread(thread_config, thread_shared, index, addrs, tx))?
        })?);
        // Thread 0 learns the ports; the others bind the same ones.
        match rx.recv() {
            Ok(Ok(bound)) => addrs = bound,
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
    Ok(SinkHandle { addr: addrs.plain, tls_addr: addrs.tls, shared, threads })
}

/// Where a thread listens: the plain listener, and the implicit-TLS one if asked for.
#[derive(Debug, Clone, Copy)]
struct Addrs {
    plain: SocketAddr,
    tls: Option<SocketAddr>,
}

fn listen(addr: SocketAddr) -> io::Result<(SocketAddr, TcpListener)> {
    let opts = ListenerOpts::new().reuse_port(true).reuse_addr(true).backlog(4096);
    TcpListener::bind_with_config(addr, &opts)
        .and_then(|l| Ok((l.local_addr()?, l)))
        .map_err(|e| io::Error::new(e.kind(), format!("listen on {addr}: {e}")))
}

async fn run_thread(
    config: Arc<SinkConfig>,
    shared: Arc<Shared>,
    index: usize,
    addrs: Addrs,
    ready: mpsc::Sender<io::Result<Addrs>>,
) -> io::Result<Counters> {
    let bound = listen(addrs.plain).and_then(|plain| {
        let tls = addrs.tls.map(listen).transpose()?;
        Ok((plain, tls))
    });
    let (plain, tls) = match bound {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
            return Err(e);
        }
    };
    let _ = ready.send(Ok(Addrs { plain: plain.0, tls: tls.as_ref().map(|t| t.0) }));
    let idle = config.idle_timeout;
    let core = Rc::new(RefCell::new(Core::new(config, Arc::clone(&shared), index)));
    let watchdog = Watchdog::new();
    let tick = (idle / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let sweeper_stop = Arc::clone(&shared);
    monoio::spawn(Rc::clone(&watchdog).run(tick, move || sweeper_stop.stop.load(Ordering::Relaxed)));
    let seq = Rc::new(Cell::new((index as u64) << 40));
    let tls_loop = tls.map(|(_, listener)| {
        let accepting = accept_loop(
            listener,
            true,
            Rc::clone(&core),
            Arc::clone(&shared),
            Rc::clone(&watchdog),
            Rc::clone(&seq),
        );
        monoio::spawn(accepting)
    });
    accept_loop(plain.1, false, Rc::clone(&core), Arc::clone(&shared), Rc::clone(&watchdog), seq).await;
    if let Some(task) = tls_loop {
        task.await;
    }
    if core.borrow().stopping() {
        // A server keeping mail tells the clients waiting for their next command that it is
        // going (421) at once, rather than keeping them, and its stop, for the whole grace:
        // every read in flight is interrupted once, and those sessions with nothing under way
        // close (see `serve`).
        watchdog.shut_down();
        watchdog.sweep(Instant::now());
    }
    // Returning drops this thread's sessions: let those under way finish first, for a while (a
    // client that sent QUIT behind its last message gets its 221 when `--exit-after-messages`
    // stops the sink at that message; serve's clients get their messages' answers).
    let grace = Instant::now() + core.borrow().config.shutdown_grace;
    while shared.active_connections.load(Ordering::Relaxed) > 0 && Instant::now() < grace {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    let counters = core.borrow().counters.clone();
    Ok(counters)
}

/// Accepts connections until the sink stops; `implicit`: each starts with a TLS handshake.
async fn accept_loop(
    listener: TcpListener,
    implicit: bool,
    core: Rc<RefCell<Core>>,
    shared: Arc<Shared>,
    watchdog: Rc<Watchdog>,
    seq: Rc<Cell<u64>>,
) {
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
            Ok((stream, peer)) => {
                seq.set(seq.get() + 1);
                let watch = watchdog.watch();
                monoio::spawn(serve(
                    stream,
                    peer,
                    implicit,
                    Rc::clone(&core),
                    Arc::clone(&shared),
                    watch,
                    seq.get(),
                ));
            }
            Err(e) if e.raw_os_error() == Some(125) => {}
            // Out of descriptors and the like: back off rather than spin.
            Err(_) => monoio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Runs the server side of a TLS handshake; counted either way.
async fn handshake(conn: &mut Conn<TcpStream>, core: &RefCell<Core>, watch: &Watch) -> bool {
    let (config, idle) = {
        let core = core.borrow();
        (core.config.tls.as_ref().map(|t| Arc::clone(&t.config)), core.config.idle_timeout)
    };
    let result = match config.map(TlsLayer::server) {
        Some(Ok(layer)) => conn.start_tls(layer, watch, Instant::now() + idle).await.is_ok(),
        _ => false,
    };
    let mut core = core.borrow_mut();
    if result {
        core.counters.tls_sessions += 1;
    } else {
        core.counters.tls_failures += 1;
    }
    result
}

/// Decrements the active-connection count however the task ends.
struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    implicit: bool,
    core: Rc<RefCell<Core>>,
    shared: Arc<Shared>,
    watch: Rc<Watch>,
    id: u64,
) {
    let _ = stream.set_nodelay(true);
    let active = shared.active_connections.fetch_add(1, Ordering::Relaxed) + 1;
    shared.peak_connections.fetch_max(active, Ordering::Relaxed);
    let _guard = ActiveGuard(shared);
    let mut stream = Conn::new(stream);
    if implicit && !handshake(&mut stream, &core, &watch).await {
        return;
    }
    let mut session = Session::new(id, implicit);
    let trusted = core.borrow().trusts(peer.ip());
    session.set_peer(peer.ip(), trusted);
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
        if !session.in_transaction() && buf.is_empty() && core.borrow().stopping() {
            // Waiting for a command from a server that is stopping: say so, and close.
            out.clear();
            out.extend_from_slice(b"421 4.3.2 Service shutting down, try later\r\n");
            core.borrow_mut().counters.reply(421);
            let _ = stream.write_all(out).await;
            close_gracefully(&mut stream, &watch).await;
            break;
        }
        let spare = buf.capacity() - buf.len();
        let (res, b) = stream.read(&watch, buf, read_size, Some(Instant::now() + idle)).await;
        buf = b;
        match res {
            Ok(ReadOutcome::Data(n)) => {
                if n >= spare.max(read_size) && read_size < MAX_READ {
                    read_size *= 2;
                }
            }
            Ok(ReadOutcome::Deadline) if core.borrow().stopping() => {
                // Interrupted by the stop: closed above if nothing is under way; a transaction
                // goes on, for the stop's grace at most.
                continue;
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
            if action == Action::Store {
                let store = core.borrow().config.store.clone();
                let stored = match store {
                    Some(store) => store.store(session.take_submission()).await,
                    None => Stored::Refused { code: 451, text: "4.3.0 No store".into() },
                };
                if session.stored(&mut core.borrow_mut(), stored, &mut out) == Action::Close {
                    let _ = act(&mut stream, out, Action::Close).await;
                    close_gracefully(&mut stream, &watch).await;
                    return;
                }
                continue;
            }
            if action == Action::StartTls {
                // Whatever the client sent behind STARTTLS was sent in plaintext: it is
                // dropped, never read as if it had come over TLS.
                let discarded = buf.len() - start;
                core.borrow_mut().counters.tls_discarded += discarded as u64;
                start = buf.len();
                if !handshake(&mut stream, &core, &watch).await {
                    session.closed(&mut core.borrow_mut());
                    return;
                }
                session.tls_started();
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
async fn close_gracefully(stream: &mut Conn<TcpStream>, watch: &Watch) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER;
    let mut sink = Vec::with_capacity(FIRST_READ);
    loop {
        sink.clear();
        let (res, b) = stream.read(watch, sink, FIRST_READ, Some(deadline)).await;
        sink = b;
        if !matches!(res, Ok(ReadOutcome::Data(_))) {
            return;
        }
    }
}

/// Carries out an [`Action`]: writes what is due, waits for a delay. Returns whether the
/// connection stays open, and the output buffer (emptied of what was written).
async fn act(stream: &mut Conn<TcpStream>, mut out: Vec<u8>, action: Action) -> (bool, Vec<u8>) {
    match action {
        Action::Continue | Action::Close | Action::StartTls | Action::Store => {
            if !out.is_empty() {
                let (res, o) = stream.write_all(out).await;
                out = o;
                out.clear();
                if res.is_err() {
                    return (false, out);
                }
            }
            (action != Action::Close, out)
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
