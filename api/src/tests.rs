//! The client against a small axum server on a temporary Unix socket: JSON calls, error mapping, streams,
//! upgrades, and the blocking wrapper.

use std::path::PathBuf;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::types::{ErrorBody, RefReq, Removed};
use crate::{blocking, Client, Error};

/// 1 MiB in chunks of 64 KiB, each chunk filled with its index.
const CHUNKS: usize = 16;
const CHUNK: usize = 64 * 1024;

fn chunks() -> impl Iterator<Item = Bytes> {
    (0..CHUNKS).map(|i| Bytes::from(vec![i as u8; CHUNK]))
}

fn routes() -> Router {
    Router::new()
        .route("/v1/status", get(|| async { axum::Json(json!({ "key": "k", "peers": 2 })) }))
        .route("/v1/echo", post(|axum::Json(v): axum::Json<Value>| async move { axum::Json(json!({ "got": v })) }))
        .route(
            "/v1/exports/{id}",
            axum::routing::delete(|Path(id): Path<String>| async move {
                if id == "nosuch" {
                    let body = ErrorBody { error: format!("no export matches {id:?}") };
                    return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
                }
                axum::Json(Removed { removed: id, name: "n".into() }).into_response()
            }),
        )
        .route(
            "/v1/stream",
            post(|| async { Body::from_stream(futures::stream::iter(chunks().map(Ok::<_, std::io::Error>))) }),
        )
        .route(
            "/v1/broken",
            post(|| async {
                // The error comes after a pause, as a real failure does: an error ready at once would abort the
                // connection before hyper flushed the head.
                let failure = async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(std::io::Error::other("disk gone"))
                };
                let items = futures::stream::iter(chunks().take(3).map(Ok)).chain(futures::stream::once(failure));
                Body::from_stream(items)
            }),
        )
        .route("/v1/plain", get(|| async { (StatusCode::BAD_GATEWAY, "upstream fell over") }))
        .route("/v1/echo-session", post(echo_session))
}

/// Reads the JSON body, then switches to an echo of the raw connection, prefixed by the body's `ref`.
async fn echo_session(req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1024).await.expect("body");
    let hello: RefReq = serde_json::from_slice(&body).expect("json");
    let mut req = Request::from_parts(parts, ());
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let mut io = TokioIo::new(on.await.expect("upgraded"));
        io.write_all(hello.reference.as_bytes()).await.expect("write");
        let mut buf = [0u8; 64];
        loop {
            let n = io.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            io.write_all(&buf[..n]).await.expect("echo");
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "metac")
        .body(Body::empty())
        .expect("response")
}

/// Serves [`routes`] on a socket in a fresh temporary directory (kept alive by the returned guard).
async fn server() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("api.sock");
    let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
    tokio::spawn(async move { axum::serve(listener, routes()).await.expect("serve") });
    (dir, sock)
}

#[tokio::test]
async fn get_post_delete() {
    let (_dir, sock) = server().await;
    let c = Client::new(&sock);
    let v: Value = c.get("/v1/status").await.unwrap();
    assert_eq!(v, json!({ "key": "k", "peers": 2 }));
    let v: Value = c.post("/v1/echo", &json!({ "a": [1, 2] })).await.unwrap();
    assert_eq!(v, json!({ "got": { "a": [1, 2] } }));
    let r: Removed = c.delete("/v1/exports/abc").await.unwrap();
    assert_eq!(r, Removed { removed: "abc".into(), name: "n".into() });
}

#[tokio::test]
async fn api_errors_carry_the_node_message() {
    let (_dir, sock) = server().await;
    let c = Client::new(&sock);
    let e = c.delete::<Removed>("/v1/exports/nosuch").await.unwrap_err();
    assert!(matches!(&e, Error::Api { status: 404, .. }), "{e:?}");
    assert_eq!(e.to_string(), "no export matches \"nosuch\"");
    // An error that is not the node's JSON still says what came.
    let e = c.get::<Value>("/v1/plain").await.unwrap_err();
    assert_eq!(e.status(), Some(502));
    assert!(e.to_string().contains("upstream fell over"), "{e}");
    // A success that is not the expected shape is a decode error.
    let e = c.get::<Removed>("/v1/status").await.unwrap_err();
    assert!(matches!(e, Error::Decode { status: 200, .. }), "{e:?}");
}

#[tokio::test]
async fn no_socket_means_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let e = Client::new(&sock).get::<Value>("/v1/status").await.unwrap_err();
    assert!(matches!(e, Error::NotRunning { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("metac node is not running (cannot connect to {}: ", sock.display())), "{msg}");
    assert!(msg.ends_with("start it with `metac node`, or point --socket / METAC_SOCKET at its socket"), "{msg}");
}

#[tokio::test]
async fn streamed_body_is_copied_in_full() {
    let (_dir, sock) = server().await;
    let c = Client::new(&sock);
    let mut out = Vec::new();
    let n = c.copy_to("/v1/stream", &RefReq { reference: "r".into() }, &mut out, false).await.unwrap();
    assert_eq!(n, (CHUNKS * CHUNK) as u64);
    assert_eq!(out, chunks().flat_map(|c| c.to_vec()).collect::<Vec<u8>>());
}

#[tokio::test]
async fn a_body_ending_in_an_error_is_interrupted() {
    let (_dir, sock) = server().await;
    let c = Client::new(&sock);
    let mut out = Vec::new();
    let e = c.copy_to("/v1/broken", &json!({}), &mut out, false).await.unwrap_err();
    assert!(matches!(e, Error::Interrupted { .. }), "{e:?}");
    assert!(e.to_string().starts_with("transfer interrupted after "), "{e}");
    assert_eq!(out.len(), 3 * CHUNK, "what came before the error was written");
}

#[tokio::test]
async fn oversized_requests_are_refused_before_sending() {
    let c = Client::new("/nonexistent.sock");
    let big = "x".repeat(crate::MAX_REQUEST + 1);
    let e = c.post::<_, Value>("/v1/echo", &big).await.unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
}

#[tokio::test]
async fn upgrade_round_trip() {
    let (_dir, sock) = server().await;
    let c = Client::new(&sock).with_timeout(Duration::from_secs(10));
    let mut io = c.upgrade("/v1/echo-session", &RefReq { reference: "hello:".into() }).await.unwrap();
    io.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 10];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello:ping");
    // An endpoint that answers 200 did not upgrade.
    let e = c.upgrade("/v1/echo", &json!({})).await.unwrap_err();
    assert!(matches!(e, Error::NotUpgraded { status: 200 }), "{e:?}");
}

#[test]
fn blocking_client_calls_the_same_endpoints() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_dir, sock) = rt.block_on(server());
    let c = blocking::Client::new(&sock).unwrap().with_timeout(Duration::from_secs(5));
    assert_eq!(c.get_value("/v1/status").unwrap()["peers"], 2);
    assert_eq!(c.post_value("/v1/echo", &json!(1)).unwrap(), json!({ "got": 1 }));
    let e = c.delete::<Removed>("/v1/exports/nosuch").unwrap_err();
    assert_eq!(e.status(), Some(404));
    let missing = blocking::Client::new(sock.with_extension("gone")).unwrap();
    assert!(matches!(missing.get_value("/v1/status"), Err(Error::NotRunning { .. })));
}

#[cfg(feature = "server")]
mod server {
    use super::*;
    use crate::server::{body_limit, no_endpoint, Json};

    fn routes() -> Router {
        Router::new()
            .route("/v1/refs/show", post(|Json(r): Json<RefReq>| async move { Json(json!({ "ref": r.reference })) }))
            .fallback(no_endpoint)
            .method_not_allowed_fallback(no_endpoint)
            .layer(body_limit())
    }

    #[tokio::test]
    async fn json_rejections_and_unknown_paths_are_error_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move { axum::serve(listener, routes()).await.unwrap() });
        let c = Client::new(&sock);
        let v: Value = c.post("/v1/refs/show", &json!({ "ref": "r" })).await.unwrap();
        assert_eq!(v, json!({ "ref": "r" }));
        let e = c.post::<_, Value>("/v1/refs/show", &json!({ "nope": 1 })).await.unwrap_err();
        assert_eq!(e.status(), Some(400));
        assert!(e.to_string().starts_with("bad request body: missing field `ref`"), "{e}");
        // Over the limit, sent raw (the client refuses to send it).
        let big = json!({ "ref": "x".repeat(crate::MAX_REQUEST) }).to_string();
        let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
        let head = format!(
            "POST /v1/refs/show HTTP/1.1\r\nhost: metac\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            big.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let _ = s.write_all(big.as_bytes()).await;
        let mut answer = vec![];
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.ends_with(r#"{"error":"cannot read the request body: length limit exceeded"}"#), "{answer}");
        let e = c.get::<Value>("/v1/nowhere").await.unwrap_err();
        assert_eq!((e.status(), e.to_string()), (Some(404), "no API endpoint /v1/nowhere".to_string()));
        let e = c.get::<Value>("/v1/refs/show").await.unwrap_err();
        assert_eq!((e.status(), e.to_string()), (Some(404), "no API endpoint /v1/refs/show".to_string()));
    }
}
