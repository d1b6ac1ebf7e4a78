//! A kind added from outside the node, as a new resource crate would be: the plug-in interface carries everything
//! (typed options, an export object opened once, sessions the node runs, its own store keys), and a node built
//! without the kind refuses its exports and binds with a clear reason.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{wait, Cluster, ROOT};
use metac_mesh::kind::Kind;
use metac_resource::{
    Bind, BoxFuture, BoxStream, Caller, Ctx, Error, ExportSpec, Exporter, Link, Plugin, Prepared, Ref, ResourceKind,
    Session,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// A toy kind: the export answers every line with its greeting. It stands in for `desktop`, which this build does
/// not serve.
struct Echo {
    opened: Arc<AtomicUsize>,
}

#[derive(Serialize, Deserialize)]
struct EchoExport {
    greeting: String,
}

#[derive(Serialize, Deserialize)]
struct EchoBind {
    line: String,
}

struct EchoExporter {
    greeting: String,
}

impl Exporter for EchoExporter {
    fn serve(
        self: Arc<Self>,
        _: Bind,
        stream: BoxStream,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<(), Error>> {
        Box::pin(async move {
            let mut s = BufReader::new(stream);
            let mut line = String::new();
            loop {
                line.clear();
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    n = s.read_line(&mut line) => if n? == 0 { return Ok(()) },
                }
                let answer = format!("{} {}", self.greeting, line);
                s.get_mut().write_all(answer.as_bytes()).await?;
            }
        })
    }
}

struct EchoSession {
    line: String,
    answer: Arc<std::sync::Mutex<String>>,
}

impl Session for EchoSession {
    fn target(&self) -> String {
        "echo".into()
    }

    fn run<'a>(&'a mut self, link: &'a Link, cancel: &'a CancellationToken) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mut s = BufReader::new(link.open().await?);
            s.get_mut().write_all(format!("{}\n", self.line).as_bytes()).await?;
            let mut answer = String::new();
            s.read_line(&mut answer).await?;
            *self.answer.lock().unwrap() = answer.trim().to_string();
            link.up();
            cancel.cancelled().await;
            Ok(())
        })
    }
}

static ANSWER: std::sync::OnceLock<Arc<std::sync::Mutex<String>>> = std::sync::OnceLock::new();

impl ResourceKind for Echo {
    type ExportOptions = EchoExport;
    type BindOptions = EchoBind;

    fn kind(&self) -> Kind {
        Kind::Desktop
    }

    fn protocol(&self) -> &'static str {
        "echo"
    }

    fn prepare(&self, source: &str, options: Option<EchoExport>, _: &Caller) -> Result<Prepared<EchoExport>, Error> {
        if source.is_empty() {
            return Err(Error::BadOptions("say what to greet with".into()));
        }
        let options = options.unwrap_or(EchoExport { greeting: source.to_string() });
        Ok(Prepared { source: source.into(), name: "echo".into(), options })
    }

    fn open<'a>(
        &'a self,
        spec: ExportSpec<EchoExport>,
        ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Arc<dyn Exporter>, Error>> {
        Box::pin(async move {
            self.opened.fetch_add(1, Ordering::SeqCst);
            // The kind's own corner of the store survives restarts.
            let n = ctx.store.get("opens")?.map(|v| v[0]).unwrap_or(0);
            ctx.store.put("opens", &[n + 1])?;
            Ok(Arc::new(EchoExporter { greeting: spec.options.greeting }) as Arc<dyn Exporter>)
        })
    }

    fn bind(&self, _: &Ref, options: EchoBind, _: &Caller, _: &Ctx) -> Result<Box<dyn Session>, Error> {
        let answer = Arc::clone(ANSWER.get_or_init(Default::default));
        Ok(Box::new(EchoSession { line: options.line, answer }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_plugged_in_from_outside_exports_binds_and_is_refused_where_it_is_missing() {
    let opened = Arc::new(AtomicUsize::new(0));
    let o = Arc::clone(&opened);
    // Nodes 0 and 1 have the kind (one line each: the kind list); node 2 is a stock build.
    let mut c = Cluster::start_with(3, move |i| {
        (i < 2).then(|| {
            let mut kinds = metac_node::kinds::builtin();
            kinds.push(Arc::new(Echo { opened: Arc::clone(&o) }) as Arc<dyn Plugin>);
            kinds
        })
    })
    .await;
    let (a, b, stock) = (c.nodes[0].n().clone(), c.nodes[1].n().clone(), c.nodes[2].n().clone());
    let (_, r) = a.export(Kind::Desktop, "hello".into(), None, None, json!(null), &ROOT).await.unwrap();
    assert_eq!(opened.load(Ordering::SeqCst), 1, "the export is opened once");

    let s = b.bind_ref(r.clone(), json!({ "line": "world" }), false, &ROOT).unwrap();
    wait(Duration::from_secs(20), "the echo bind to be up", || async {
        b.binds(None, &ROOT).iter().any(|v| v.id == s.id && v.state == "up")
    })
    .await;
    assert_eq!(*ANSWER.get().unwrap().lock().unwrap(), "hello world");
    assert_eq!(opened.load(Ordering::SeqCst), 1, "binds share the open export");

    // A stock node neither exports nor binds the kind, and says why.
    let e = stock.export(Kind::Desktop, "x".into(), None, None, json!(null), &ROOT).await.unwrap_err();
    assert_eq!(e.message, "resource kind desktop is not served by this build of metac");
    let e = stock.bind_ref(r.clone(), json!({ "line": "x" }), false, &ROOT).unwrap_err();
    assert_eq!(e.message, "resource kind desktop is not served by this build of metac");
    // But it still lists the resource its peer adverts.
    wait(Duration::from_secs(20), "the stock node to list the echo export", || async {
        let snap = stock.snapshot().await.unwrap();
        snap.nodes.iter().any(|n| n.resources.iter().any(|x| x.kind == Kind::Desktop))
    })
    .await;
    // Bad options are refused by the kind before anything is recorded.
    let e = a.export(Kind::Desktop, String::new(), None, None, json!(null), &ROOT).await.unwrap_err();
    assert_eq!((e.status, e.message.as_str()), (400, "say what to greet with"));
    let e = a.export(Kind::Desktop, "x".into(), None, None, json!({ "greting": 1 }), &ROOT).await.unwrap_err();
    assert!(e.message.starts_with("bad desktop export options"), "{}", e.message);
    assert_eq!(a.exports().unwrap().len(), 1);

    // After a restart the export is opened again, and the kind's store kept its count.
    drop(a);
    c.nodes[0].restart().await;
    assert_eq!(opened.load(Ordering::SeqCst), 2);
    let store = c.nodes[0].n().ctx(Kind::Desktop).store;
    assert_eq!(store.get("opens").unwrap(), Some(vec![2]));
    drop((b, stock));
    c.stop().await;
}
