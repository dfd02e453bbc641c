//! Connections and calls are bounded whatever the clients do: idle sockets are closed, a
//! connection past the limit is closed at once, calls past the in-flight limit are shed with a
//! retryable status while health checks still answer, and running out of file descriptors
//! does not make the accept loop spin.

use std::convert::Infallible;
use std::process::Stdio;
use std::time::{Duration, Instant};

use http_body_util::StreamBody;
use hyper::body::{Bytes, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keyauth_proto::SERVICE_NAME;
use keyauth_server::limits::Limits;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::process::{keyauth, log_lines, wait_for_line};
use crate::helpers::*;

async fn spawn_limited(limits: Limits) -> TestApp {
    spawn_with(
        Backend::Sqlite,
        Options {
            limits,
            ..Options::default()
        },
    )
    .await
    .expect("SQLite always runs")
}

/// Reads from `stream` until the server closes it; how long that took (`None`: still open
/// after `within`).
pub(crate) async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

async fn health(channel: Channel) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SERVICE_NAME.to_owned(),
        })
        .await
        .map(|r| r.into_inner().status)
}

async fn connect(addr: std::net::SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_calls_is_closed_by_the_deadline() {
    let app = spawn_limited(Limits {
        first_request_timeout: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    let took = closed_within(&mut idle, Duration::from_secs(5))
        .await
        .expect("an idle connection is closed");
    eprintln!("idle connection closed after {took:?}");
    assert!(took >= Duration::from_millis(250), "{took:?}");
    // A connection that calls is kept past the deadline.
    let channel = connect(app.addr).await;
    health(channel.clone()).await.expect("health answers");
    tokio::time::sleep(Duration::from_millis(600)).await;
    health(channel).await.expect("health answers");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_limit_is_closed_at_once() {
    let app = spawn_limited(Limits {
        max_connections: 3,
        ..Limits::default()
    })
    .await;
    // The test app's own channel holds one connection; two idle sockets take the rest.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let mut extra = TcpStream::connect(app.addr).await.unwrap();
    let took = closed_within(&mut extra, Duration::from_secs(2))
        .await
        .expect("a connection past the limit is closed at once");
    eprintln!("connection past the limit closed after {took:?}");
    // The connections within the limit still work.
    health(app.channel.clone()).await.expect("health answers");
    // Their slots are given back when they close.
    drop(held);
    let channel = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let channel = connect(app.addr).await;
            if health(channel.clone()).await.is_ok() {
                return channel;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a new connection is served once the held ones close");
    drop(channel);
    app.stop().await;
}

/// A request body that never ends (a message header declaring 100 bytes, then nothing): the
/// call stays in flight, reading it.
type Unfinished = StreamBody<
    tokio_stream::adapters::Chain<
        tokio_stream::Once<Result<Frame<Bytes>, Infallible>>,
        tokio_stream::Pending<Result<Frame<Bytes>, Infallible>>,
    >,
>;

fn unfinished_verify(addr: std::net::SocketAddr) -> hyper::Request<Unfinished> {
    hyper::Request::post(format!("http://{addr}/{SERVICE_NAME}/Verify"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(
            tokio_stream::once(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 100]))))
                .chain(tokio_stream::pending()),
        ))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_past_the_in_flight_limit_are_shed_while_health_answers() {
    let limit = 4;
    let app = spawn_limited(Limits {
        max_in_flight: limit,
        ..Limits::default()
    })
    .await;
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    // `limit` + 1 calls whose requests never finish: `limit` of them hold every place, and
    // the other is answered at once, UNAVAILABLE, without its body being read.
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
    let mut held = Vec::new();
    for _ in 0..=limit {
        sender.ready().await.unwrap();
        let call = sender.send_request(unfinished_verify(app.addr));
        let answers = answers.clone();
        held.push(tokio::spawn(async move {
            let _ = answers.send(call.await);
        }));
    }
    let shed = tokio::time::timeout(Duration::from_secs(5), answered.recv())
        .await
        .expect("a call past the in-flight limit is answered at once")
        .unwrap()
        .unwrap();
    let status = tonic::Status::from_header_map(shed.headers()).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), answered.recv())
            .await
            .is_err(),
        "only the call past the limit is answered"
    );
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let details = tonic_types::StatusExt::get_error_details(&status);
    assert_eq!(details.error_info().unwrap().reason, "OVERLOADED");
    assert!(details.retry_info().unwrap().retry_delay.is_some());
    // Health checks are not shed.
    health(app.channel.clone()).await.expect("health answers");
    // The places come back when the held calls go.
    conn.abort();
    for call in held {
        call.abort();
    }
    let mut client = app.client.clone();
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let answer = client
                .verify(keyauth_proto::VerifyRequest {
                    key: "sk_test_garbage".into(),
                    required_permissions: vec![],
                })
                .await;
            if answer.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("calls are served again once the held ones are gone");
    app.stop().await;
}

/// CPU time (user + system) of process `pid` so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) : utime is the 14th field of the
    // line, stime the 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_errors_at_the_fd_limit_do_not_spin() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::helpers::pki::sqlite_url(&dir);
    // `keyauth serve` with few file descriptors, through a shell that lowers the limit.
    let bin = keyauth().get_program().to_owned();
    let mut child = std::process::Command::new("sh")
        .env_remove("KEYAUTH_ADMIN_TOKEN")
        .env_remove("KEYAUTH_DATABASE_URL")
        .args(["-c", "ulimit -n 96 && exec \"$0\" \"$@\""])
        .arg(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--database", &db])
        .args(["--first-request-timeout", "30s"])
        .env("RUST_LOG", "keyauth=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = log_lines(&mut child);
    let serving = wait_for_line(&lines, "keyauth serving");
    let addr: std::net::SocketAddr = serving
        .split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // More sockets than the server has descriptors: the accept queue keeps the rest.
    let mut sockets = Vec::new();
    for _ in 0..150 {
        sockets.push(TcpStream::connect(addr).await.unwrap());
    }
    wait_for_line(&lines, "for want of resources");
    let before = cpu_time(child.id());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_time(child.id()) - before;
    eprintln!("CPU at the fd limit: {spent:?} in 2 s");
    assert!(
        spent < Duration::from_millis(400),
        "the server spent {spent:?} of CPU in 2 s at its fd limit"
    );
    // Once the sockets go, it serves again.
    drop(sockets);
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                && health(channel).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("health answers once the connections are gone");
    let _ = child.kill();
    let _ = child.wait();
}
