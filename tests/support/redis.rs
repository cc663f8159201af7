//! Test support for the shared-state backend: a real `redis-server` per test on a free loopback
//! port (stop and restart it on the same port to play an outage), and `SlowProxy`, a TCP proxy in
//! front of it that can delay Redis's answers or hold every byte (a network partition), so tests
//! can make Redis slow or unreachable without touching the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a started server gets to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// The program to run: `$AI_GATEWAY_REDIS_SERVER` (e.g. `valkey-server`), else `redis-server`.
fn program() -> String {
    std::env::var("AI_GATEWAY_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned())
}

/// A `redis-server` of this test's own: loopback only, no persistence, data in a temp dir. Killed
/// when dropped.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits (at most 5 s) until it answers PING.
    pub fn start() -> RedisServer {
        // A port from the same pool as the gateways' listeners: handed out once per process and
        // below the ephemeral range, so nothing else takes it while the server is stopped.
        let port = super::free_ports().0;
        let mut server = RedisServer {
            port,
            dir: tempfile::tempdir().expect("temp dir for redis-server"),
            child: None,
        };
        server.spawn();
        server
    }

    /// `redis://127.0.0.1:<port>/0`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (no shutdown save: like a crash) and waits for it to be gone. The port
    /// stays this server's, for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server if it runs and starts a new one on the same port, with no data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs one command on a fresh connection and renders the reply as text (see `render`).
    /// Panics on a Redis error: for assertions.
    pub fn cmd(&self, args: &[&str]) -> String {
        render(&self.query::<redis::Value>(args))
    }

    /// Runs one command and converts the reply, e.g. `query::<Vec<String>>(&["KEYS", "*"])`.
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        self.try_query(args)
            .unwrap_or_else(|e| panic!("redis {args:?} on port {}: {e}", self.port))
    }

    /// Runs one command; the error as text when the server cannot be reached or refuses it.
    pub fn try_query<T: redis::FromRedisValue>(&self, args: &[&str]) -> Result<T, String> {
        let (name, rest) = args.split_first().expect("a command");
        let mut con = connect(&self.url()).map_err(|e| e.to_string())?;
        let mut cmd = redis::cmd(name);
        for a in rest {
            cmd.arg(*a);
        }
        cmd.query(&mut con).map_err(|e| e.to_string())
    }

    /// Every key matching `pattern`, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.query(&["KEYS", pattern]);
        keys.sort();
        keys
    }

    /// The server's output so far (its log goes to a file in its temp dir).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn spawn(&mut self) {
        let program = program();
        let log = std::fs::File::create(self.log_path()).expect("redis-server log file");
        let err = log.try_clone().expect("redis-server log file");
        let child = Command::new(&program)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "{program} not found: run scripts/test.sh, which installs it, or apt install redis-server"
            ),
            Err(e) => panic!("cannot run {program}: {e}"),
        };
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let until = Instant::now() + START_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("spawned");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                panic!(
                    "redis-server on port {} exited at start ({status}):\n{}",
                    self.port,
                    self.log()
                );
            }
            let pong = self.try_query::<String>(&["PING"]);
            if pong.as_deref() == Ok("PONG") {
                return;
            }
            if Instant::now() > until {
                self.stop();
                panic!(
                    "redis-server on port {} did not answer PING within {START_TIMEOUT:?} ({pong:?}):\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A synchronous connection with bounded connect, read and write, so a test fails instead of
/// hanging on a dead or held connection.
pub fn connect(url: &str) -> redis::RedisResult<redis::Connection> {
    let con = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
    con.set_read_timeout(Some(Duration::from_secs(5)))?;
    con.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(con)
}

/// A reply as text: strings as they are, integers and doubles in decimal, nil as `(nil)`,
/// arrays, sets and maps one element (or `key value`) per line.
pub fn render(v: &redis::Value) -> String {
    use redis::Value as V;
    match v {
        V::Nil => "(nil)".into(),
        V::Int(i) => i.to_string(),
        V::Double(d) => d.to_string(),
        V::Boolean(b) => b.to_string(),
        V::Okay => "OK".into(),
        V::SimpleString(s) => s.clone(),
        V::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        V::VerbatimString { text, .. } => text.clone(),
        V::Array(items) | V::Set(items) => items.iter().map(render).collect::<Vec<_>>().join("\n"),
        V::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| format!("{} {}", render(k), render(v)))
            .collect::<Vec<_>>()
            .join("\n"),
        other => format!("{other:?}"),
    }
}

/// Knobs shared by every connection of a `SlowProxy`; read per chunk, so a change applies to
/// connections already open (a gateway keeps its Redis connection).
#[derive(Default)]
struct ProxyKnobs {
    delay_us: AtomicU64,
    blackhole: AtomicBool,
    connections: AtomicUsize,
}

/// A TCP proxy on a free loopback port in front of a Redis: bytes flow both ways unchanged,
/// unless `set_delay` (every chunk from Redis is held that long, pipelined like a slow link,
/// not a slow server) or `set_blackhole` (connections are accepted and read, but nothing is
/// passed on either way until it is turned off: a partition that heals, with nothing lost, so
/// the RESP stream stays in order). It runs on its own thread and runtime, so a test may block.
pub struct SlowProxy {
    addr: SocketAddr,
    knobs: Arc<ProxyKnobs>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SlowProxy {
    /// Proxies a fresh port to `127.0.0.1:upstream_port`. When the upstream cannot be reached, a
    /// client's connection is closed at once, as it would be without the proxy.
    pub fn start(upstream_port: u16) -> SlowProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy port");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("proxy address");
        let knobs = Arc::new(ProxyKnobs::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let k = knobs.clone();
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream_port));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                tokio::select! {
                    _ = accept_loop(listener, upstream, k) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task, closing their sockets.
        });
        SlowProxy {
            addr,
            knobs,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `redis://127.0.0.1:<proxy port>/0`
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Holds every chunk from Redis this long before the client gets it (0 = off).
    pub fn set_delay(&self, delay: Duration) {
        self.knobs
            .delay_us
            .store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// While on, nothing passes in either direction; what was read is delivered once it is off.
    pub fn set_blackhole(&self, on: bool) {
        self.knobs.blackhole.store(on, Ordering::SeqCst);
    }

    /// Client connections accepted so far (a reconnecting client opens new ones).
    pub fn connections(&self) -> usize {
        self.knobs.connections.load(Ordering::SeqCst)
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    upstream: SocketAddr,
    knobs: Arc<ProxyKnobs>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors or the like: do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        knobs.connections.fetch_add(1, Ordering::SeqCst);
        let knobs = knobs.clone();
        tokio::spawn(async move {
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                return; // dropping `client` closes it: Redis is down
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            // Either side ending ends the connection: a Redis client does not half-close.
            tokio::select! {
                _ = pipe(cr, sw, knobs.clone(), false) => {}
                _ = pipe(sr, cw, knobs, true) => {}
            }
        });
    }
}

/// Copies one direction. Reading never waits for the writer (chunks queue up with the time they
/// arrived), so a delay adds latency without limiting throughput, and a blackhole still reads.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    knobs: Arc<ProxyKnobs>,
    delayed: bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let k = knobs.clone();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let delay = if delayed {
                        Duration::from_micros(k.delay_us.load(Ordering::SeqCst))
                    } else {
                        Duration::ZERO
                    };
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due.into()).await;
            while knobs.blackhole.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    // The writer drains what was read before the reader's end, then closes its side.
    tokio::join!(read, write);
}
