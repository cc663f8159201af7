//! The Redis test support works as the shared-state tests rely on: a real `redis-server` that can
//! be stopped and restarted empty on the same port, and a proxy in front of it that passes RESP
//! through unchanged, delays Redis's answers by a set time (without serializing them) and holds
//! every byte while blackholed.

mod support;

use std::time::{Duration, Instant};
use support::redis::{connect, RedisServer, SlowProxy};

fn ping(con: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(con)
}

#[test]
fn server_answers_stops_and_restarts_empty_on_the_same_port() {
    let mut server = RedisServer::start();
    assert_eq!(
        server.url(),
        format!("redis://127.0.0.1:{}/0", server.port())
    );
    assert_eq!(server.cmd(&["PING"]), "PONG");
    assert_eq!(server.cmd(&["SET", "aigw:{c}:k", "v"]), "OK");
    assert_eq!(server.cmd(&["GET", "aigw:{c}:k"]), "v");
    assert_eq!(server.cmd(&["INCR", "n"]), "1");
    assert_eq!(server.keys("aigw:*"), vec!["aigw:{c}:k".to_owned()]);

    let port = server.port();
    server.stop();
    assert!(!server.is_running());
    assert!(
        server.try_query::<String>(&["PING"]).is_err(),
        "a stopped server does not answer"
    );

    server.restart();
    assert_eq!(server.port(), port, "restarted on the same port");
    assert_eq!(server.cmd(&["GET", "aigw:{c}:k"]), "(nil)", "with no data");
    assert_eq!(server.cmd(&["DBSIZE"]), "0");
}

#[test]
fn two_servers_are_independent() {
    let (a, b) = (RedisServer::start(), RedisServer::start());
    assert_ne!(a.port(), b.port());
    a.cmd(&["SET", "k", "a"]);
    assert_eq!(b.cmd(&["GET", "k"]), "(nil)");
}

#[test]
fn proxy_passes_commands_and_delays_answers() {
    let server = RedisServer::start();
    let proxy = SlowProxy::start(server.port());
    assert_eq!(proxy.url(), format!("redis://127.0.0.1:{}/0", proxy.port()));

    let mut con = connect(&proxy.url()).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");
    let _: () = redis::cmd("SET")
        .arg("through")
        .arg("proxy")
        .query(&mut con)
        .unwrap();
    assert_eq!(server.cmd(&["GET", "through"]), "proxy");

    proxy.set_delay(Duration::from_millis(300));
    let t = Instant::now();
    assert_eq!(ping(&mut con).unwrap(), "PONG");
    let slow = t.elapsed();
    assert!(slow >= Duration::from_millis(300), "PING took {slow:?}");

    proxy.set_delay(Duration::ZERO);
    let t = Instant::now();
    assert_eq!(ping(&mut con).unwrap(), "PONG");
    let fast = t.elapsed();
    assert!(fast < Duration::from_millis(200), "PING took {fast:?}");
    assert_eq!(proxy.connections(), 1, "one connection, kept open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_is_latency_not_a_queue() {
    // 20 commands pipelined on one multiplexed connection (as the gateway sends them) each wait
    // the delay once, together, not one after the other.
    let server = RedisServer::start();
    let proxy = SlowProxy::start(server.port());
    let client = redis::Client::open(proxy.url()).unwrap();
    let con = client.get_multiplexed_async_connection().await.unwrap();
    proxy.set_delay(Duration::from_millis(200));
    let t = Instant::now();
    let pings = (0..20).map(|i| {
        let mut con = con.clone();
        async move {
            redis::cmd("ECHO")
                .arg(i)
                .query_async::<String>(&mut con)
                .await
                .unwrap()
        }
    });
    let answers = futures::future::join_all(pings).await;
    let took = t.elapsed();
    assert_eq!(
        answers,
        (0..20).map(|i| i.to_string()).collect::<Vec<_>>(),
        "in order"
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(1_000),
        "20 pipelined commands took {took:?}"
    );
}

#[test]
fn blackhole_holds_everything_until_lifted() {
    let server = RedisServer::start();
    let proxy = SlowProxy::start(server.port());
    let mut con = connect(&proxy.url()).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");

    proxy.set_blackhole(true);
    con.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let t = Instant::now();
    let err = redis::cmd("SET")
        .arg("held")
        .arg("1")
        .query::<()>(&mut con)
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        server.cmd(&["EXISTS", "held"]),
        "0",
        "the command did not reach Redis"
    );
    // New connections are accepted and read, and get no answer either.
    let t = Instant::now();
    let held = std::net::TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    held.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    std::io::Write::write_all(&mut &held, b"*1\r\n$4\r\nPING\r\n").unwrap();
    let mut buf = [0u8; 16];
    assert!(std::io::Read::read(&mut &held, &mut buf).is_err());
    assert!(t.elapsed() >= Duration::from_millis(200));

    proxy.set_blackhole(false);
    // What was held is delivered in order once the partition heals.
    let mut got = Vec::new();
    held.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    while !got.ends_with(b"\r\n") {
        let n = std::io::Read::read(&mut &held, &mut buf).unwrap();
        assert!(n > 0, "closed");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, b"+PONG\r\n");
    assert_eq!(server.cmd(&["GET", "held"]), "1");
    let mut fresh = connect(&proxy.url()).unwrap();
    assert_eq!(ping(&mut fresh).unwrap(), "PONG");
}

#[test]
fn proxy_follows_the_server_down_and_back() {
    let mut server = RedisServer::start();
    let proxy = SlowProxy::start(server.port());
    let mut con = connect(&proxy.url()).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");

    server.stop();
    assert!(ping(&mut con).is_err(), "the open connection is closed");
    assert!(
        connect(&proxy.url())
            .and_then(|mut c| ping(&mut c))
            .is_err(),
        "a new one is refused while Redis is down"
    );

    server.restart();
    let mut con = connect(&proxy.url()).unwrap();
    assert_eq!(ping(&mut con).unwrap(), "PONG");
}
