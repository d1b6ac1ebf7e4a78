use super::*;
use crate::spec::Process;

/// The request a calling node sends, pinned: a change here is a change of metac-run/1.
#[test]
fn requests_and_answers_keep_their_encoding() {
    let spec = Spec {
        process: Process {
            args: vec!["make".into(), "-j8".into()],
            cwd: Some("/home/ann/p".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let env = Envelope { uid: 1000, gid: 100, request: Request::Run { spec, attach: true } };
    let json = serde_json::to_value(&env).unwrap();
    assert_eq!(json["uid"], 1000);
    assert_eq!(json["request"]["op"], "run");
    assert_eq!(json["request"]["attach"], true);
    assert_eq!(json["request"]["spec"]["process"]["args"], serde_json::json!(["make", "-j8"]));
    let back: Envelope = serde_json::from_value(json).unwrap();
    assert_eq!(back, env);
    let k = serde_json::to_string(&Request::Kill { id: "abc".into(), signal: 2 }).unwrap();
    assert_eq!(k, r#"{"op":"kill","id":"abc","signal":2}"#);
    let a = serde_json::to_string(&Answer::Err { status: 403, message: "no".into() }).unwrap();
    assert_eq!(a, r#"{"err":{"status":403,"message":"no"}}"#);
    assert_eq!(serde_json::to_string(&Answer::Ok(serde_json::Value::Null)).unwrap(), r#"{"ok":null}"#);
}

/// Attack: a calling node (any ref holder) sends a huge length, garbage, or an unknown operation: each is refused
/// with what was wrong, before anything is allocated for a length past the bound.
#[tokio::test]
async fn bad_requests_are_refused_with_a_reason() {
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    a.write_all(&(u32::MAX).to_be_bytes()).await.unwrap();
    let e = recv::<_, Envelope>(&mut b).await.unwrap_err().to_string();
    assert!(e.contains("more than the 1048576 allowed"), "{e}");
    for body in [&b"{"[..], br#"{"uid":0,"gid":0,"request":{"op":"format_disk"}}"#, br#"{"uid":-1}"#] {
        let e = decode::<Envelope>(body).unwrap_err().to_string();
        assert!(e.contains("malformed message"), "{e}");
    }
    let (mut a, mut b) = tokio::io::duplex(1 << 16);
    a.write_all(&3u32.to_be_bytes()).await.unwrap();
    drop(a);
    assert!(recv::<_, Envelope>(&mut b).await.is_err(), "a message cut short is an error");
}

#[test]
fn answers_keep_the_kind_of_error() {
    let e = Answer::Err { status: 403, message: "revoked".into() }.into_result::<()>("n1").unwrap_err();
    assert!(matches!(e, Error::Refused { .. }), "{e:?}");
    assert!(e.to_string().contains("revoked"));
    let e = Answer::Err { status: 404, message: "no container".into() }.into_result::<()>("n1").unwrap_err();
    assert!(matches!(e, Error::NotFound(_)));
    let e = Answer::Ok(serde_json::json!("x")).into_result::<u32>("n1").unwrap_err();
    assert!(matches!(e, Error::Protocol(_)));
}

fn frames(b: &[u8]) -> Vec<Frame> {
    let mut out = vec![];
    let mut at = 0;
    while let Some((f, n)) = Frame::decode(&b[at..]).unwrap() {
        out.push(f);
        at += n;
    }
    out
}

/// Output and the exit pass through; pings do not reach the local side; the relay ends at the exit.
#[tokio::test]
async fn a_relay_passes_frames_and_the_exit_but_not_pings() {
    let (local, mut client) = tokio::io::duplex(1 << 16);
    let (mesh, mut peer) = tokio::io::duplex(1 << 16);
    let task = tokio::spawn(async move {
        let mut local = local;
        relay(Some(&mut local), mesh, std::future::pending()).await
    });
    let mut b = vec![];
    Frame::Ping.encode(&mut b);
    Frame::Stdout(b"hi\n".to_vec()).encode(&mut b);
    Frame::Ping.encode(&mut b);
    let x = Exit { code: Some(42), signal: None, oom_killed: false };
    Frame::Exit(x).encode(&mut b);
    peer.write_all(&b).await.unwrap();
    assert_eq!(task.await.unwrap(), End::Exited(x));
    let mut got = vec![0u8; 256];
    let n = client.read(&mut got).await.unwrap();
    assert_eq!(frames(&got[..n]), vec![Frame::Stdout(b"hi\n".to_vec()), Frame::Exit(x)]);
    // What the client typed went the other way, with pings beside it.
    let _ = &mut peer;
}

/// Input from the local side reaches the other node, and pings go out each second.
#[tokio::test(start_paused = true)]
async fn a_relay_pings_and_ends_when_the_other_node_falls_silent() {
    let (local, mut client) = tokio::io::duplex(1 << 16);
    let (mesh, mut peer) = tokio::io::duplex(1 << 16);
    let task = tokio::spawn(async move {
        let mut local = local;
        relay(Some(&mut local), mesh, std::future::pending()).await
    });
    let mut b = vec![];
    Frame::Stdin(b"typed".to_vec()).encode(&mut b);
    client.write_all(&b).await.unwrap();
    // Nothing comes back: after SILENCE the relay gives up.
    let end = tokio::time::timeout(SILENCE * 2, task).await.expect("ends within twice the silence").unwrap();
    assert_eq!(end, End::PeerSilent);
    let mut got = vec![0u8; 4096];
    let n = peer.read(&mut got).await.unwrap();
    let f = frames(&got[..n]);
    assert!(f.contains(&Frame::Stdin(b"typed".to_vec())), "{f:?}");
    assert!(f.iter().filter(|f| **f == Frame::Ping).count() >= 3, "pings each second: {f:?}");
}

/// Without a local side, the process's end (`done`) sends the exit to the other node.
#[tokio::test]
async fn a_detached_relay_sends_the_exit_when_the_process_ends() {
    let (mesh, mut peer) = tokio::io::duplex(1 << 16);
    let x = Exit { code: None, signal: Some(9), oom_killed: false };
    let end = relay(None::<tokio::io::DuplexStream>, mesh, async move { Some(x) }).await;
    assert_eq!(end, End::Exited(x));
    let mut got = vec![];
    peer.read_to_end(&mut got).await.unwrap();
    assert_eq!(frames(&got).last(), Some(&Frame::Exit(x)));
}

/// A closed stream from the other node ends the relay as the other node gone.
#[tokio::test]
async fn a_relay_ends_when_the_other_node_closes() {
    let (local, _client) = tokio::io::duplex(1 << 16);
    let (mesh, peer) = tokio::io::duplex(1 << 16);
    drop(peer);
    let mut local = local;
    let end = relay(Some(&mut local), mesh, std::future::pending()).await;
    assert!(matches!(end, End::PeerClosed(_)), "{end:?}");
}

#[test]
fn load_per_cpu_reads_the_advert_note() {
    use super::caller::load_per_cpu;
    assert_eq!(load_per_cpu("load=1.00 cpus=4 mem_mib=100"), Some(0.25));
    assert_eq!(load_per_cpu("load=0.5"), Some(0.5));
    assert_eq!(load_per_cpu("cpus=2"), None);
    assert_eq!(load_per_cpu(""), None);
}

/// Attack: a ref holder asks for this node's paths, capabilities or network, or to run as someone else.
#[test]
fn a_remote_run_may_not_reach_the_running_nodes_own_things() {
    use super::serve::allowed;
    let base = || Spec { process: Process { args: vec!["sh".into()], ..Default::default() }, ..Default::default() };
    let mut s = base();
    s.mounts = vec!["/data=local:/etc".parse().unwrap()];
    assert!(allowed(&s).unwrap_err().to_string().contains("cannot mount a path of this node"));
    let mut s = base();
    s.rootfs = Some("/".into());
    assert!(allowed(&s).unwrap_err().to_string().contains("--rootfs"));
    let mut s = base();
    s.cap_add = vec!["SYS_ADMIN".into()];
    assert!(allowed(&s).unwrap_err().to_string().contains("capabilities"));
    let mut s = base();
    s.network = crate::spec::Network::Host;
    assert!(allowed(&s).unwrap_err().to_string().contains("network"));
    let mut s = base();
    s.mounts = vec!["/tmp=tmpfs:".parse().unwrap()];
    allowed(&s).unwrap();
}
