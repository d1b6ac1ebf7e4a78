//! The client side of `metac file get` and `put`: copies between a local file and an export through the node's
//! API (`/v1/file/get`, `/v1/file/put`), with a progress line and resume. The CLI and the in-process tests call
//! these; the node does the NBD work.
//!
//! `get` writes in place, appending to LOCALFILE, never to a side file: the file only grows, in order, so its size
//! is how far the copy got and the export's size is reached only by the last byte. That is what makes resume a
//! matter of the file's length (as `curl -C -` and `wget -c`), and the final `fsync` before "done" makes the
//! complete size durable. A file of the export's size is complete; a shorter one is continued after its last
//! MiB (at most) was found equal to the export's bytes there, so that another file is never silently extended.
//!
//! `put --resume` reads the export back from the start and compares it, 4 MiB at a time, with the local file; the
//! first block that differs and everything after it is written. NBD has no checksum command and the exporter runs
//! plain NBD, so reading back is the only way to know what it holds; a read is cheaper than a write there (no
//! allocation, no journal, no wear) and pipelines as well, and it stops at the first difference. The bytes are
//! compared as they are, not hashed: both sides are in this process anyway.

use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use metac_api::progress::Progress;
use metac_api::{BodyStream, Client};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader};

use super::api::{GetReq, PutEvent, PutReq, SIZE_HEADER};

/// How much of a partial file's end must equal the export before `get` continues it.
pub const RESUME_CHECK: u64 = 1 << 20;
/// The block `put --resume` compares.
pub const COMPARE_BLOCK: u64 = 4 << 20;

/// What failed in a copy.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The node refused the call, or the transfer behind it failed.
    #[error("{0}")]
    Api(#[from] metac_api::Error),
    /// The local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Local {
        /// The local file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A local file longer than the export it should be a copy of, or be written into.
    #[error("{} is {local} bytes, larger than the export ({remote} bytes){hint}", path.display())]
    Larger {
        /// The local file.
        path: PathBuf,
        /// Its size.
        local: u64,
        /// The export's.
        remote: u64,
        /// What to do.
        hint: &'static str,
    },
    /// A partial file whose end is not the export's bytes there.
    #[error("{} is not a partial copy of this export: its bytes {offset}..{end} differ from the export's; use \
             --force to copy it again from the start", path.display())]
    Mismatch {
        /// The local file.
        path: PathBuf,
        /// Start of the range compared.
        offset: u64,
        /// End of it.
        end: u64,
    },
    /// The transfer stopped part way.
    #[error("{why}; {done} of {total} bytes are in place: run the same command again to resume")]
    Stopped {
        /// The reason.
        why: String,
        /// Position reached (for get: the local file's length; for put: acknowledged by the exporter).
        done: u64,
        /// Where it should have ended.
        total: u64,
    },
    /// The node answered something other than the protocol of these routes.
    #[error("the node's answer: {0}")]
    Answer(String),
}

fn local(path: &Path) -> impl FnOnce(std::io::Error) -> CopyError + '_ {
    move |source| CopyError::Local { path: path.to_path_buf(), source }
}

/// What a `get` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GetReport {
    /// The export's size, now the file's.
    pub size: u64,
    /// Where this run started (the length of the partial file it continued, or 0).
    pub resumed_from: u64,
    /// Bytes copied by this run.
    pub copied: u64,
    /// The file was complete already: nothing was copied.
    pub complete: bool,
}

/// Copies the export behind `reference` into `path`: continues a partial copy (after checking its end), reports a
/// complete one as such, or (`force`) starts over. `progress`: a progress line on stderr.
pub async fn get(
    c: &Client,
    reference: &str,
    path: &Path,
    force: bool,
    progress: bool,
) -> Result<GetReport, CopyError> {
    let have = match tokio::fs::metadata(path).await {
        Ok(_) if force => 0,
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(local(path)(e)),
    };
    let check = have.min(RESUME_CHECK);
    let req = GetReq { reference: reference.to_string(), offset: have - check };
    let mut body = c.post_stream("/v1/file/get", &req).await?;
    let size = size_of(&body)?;
    if have > size {
        let hint = ": it is not a partial copy of this export; use --force to replace it";
        return Err(CopyError::Larger { path: path.to_path_buf(), local: have, remote: size, hint });
    }
    let mut file = if have == 0 {
        tokio::fs::File::create(path).await.map_err(local(path))?
    } else {
        tokio::fs::OpenOptions::new().read(true).write(true).open(path).await.map_err(local(path))?
    };
    // The first `check` bytes of the body are the file's last ones, if it is what it claims to be.
    let mut pending = bytes::Bytes::new();
    if check > 0 {
        let mut ours = vec![0u8; check as usize];
        file.seek(SeekFrom::Start(have - check)).await.map_err(local(path))?;
        file.read_exact(&mut ours).await.map_err(local(path))?;
        let mut theirs = Vec::with_capacity(check as usize);
        while (theirs.len() as u64) < check {
            let Some(chunk) = body.next().await.transpose()? else { break };
            let take = chunk.len().min(check as usize - theirs.len());
            theirs.extend_from_slice(&chunk[..take]);
            pending = chunk.slice(take..);
        }
        if theirs != ours {
            return Err(CopyError::Mismatch { path: path.to_path_buf(), offset: have - check, end: have });
        }
    }
    if have == size {
        return Ok(GetReport { size, resumed_from: have, copied: 0, complete: true });
    }
    let mut bar = Progress::sized(progress, have, size);
    let mut at = have;
    let stopped = |why: String, at| CopyError::Stopped { why, done: at, total: size };
    loop {
        if !pending.is_empty() {
            file.write_all(&pending).await.map_err(local(path))?;
            at += pending.len() as u64;
            bar.update(at);
        }
        match body.next().await {
            Some(Ok(chunk)) => pending = chunk,
            Some(Err(e)) => {
                bar.finish(at);
                // What arrived is in the file; flush it so a resume finds it.
                let _ = file.sync_all().await;
                return Err(stopped(e.to_string(), at));
            }
            None => break,
        }
    }
    bar.finish(at);
    file.sync_all().await.map_err(local(path))?;
    if at != size {
        return Err(stopped("the node ended the copy early".into(), at));
    }
    Ok(GetReport { size, resumed_from: have, copied: size - have, complete: false })
}

fn size_of(body: &BodyStream) -> Result<u64, CopyError> {
    body.header(SIZE_HEADER)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CopyError::Answer(format!("no {SIZE_HEADER} header with the export's size")))
}

/// What a `put` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PutReport {
    /// The local file's size.
    pub size: u64,
    /// Bytes found equal on the export and not written (`--resume`).
    pub skipped: u64,
    /// Bytes written and flushed by this run.
    pub written: u64,
}

/// Writes `path` into the export behind `reference` at offset 0, flushed on the exporter before it returns;
/// `resume` first skips the blocks already equal at the start. The file must not be larger than the export.
pub async fn put(
    c: &Client,
    path: &Path,
    reference: &str,
    resume: bool,
    progress: bool,
) -> Result<PutReport, CopyError> {
    let mut file = tokio::fs::File::open(path).await.map_err(local(path))?;
    let size = file.metadata().await.map_err(local(path))?.len();
    let offset = if resume { equal_prefix(c, reference, path, size).await? } else { 0 };
    if resume && offset == size {
        return Ok(PutReport { size, skipped: size, written: 0 });
    }
    let req = PutReq { reference: reference.to_string(), offset, len: size - offset };
    let io = c.upgrade("/v1/file/put", &req).await?;
    let (rd, mut wr) = tokio::io::split(io);
    file.seek(SeekFrom::Start(offset)).await.map_err(local(path))?;
    let send = async {
        let mut limited = (&mut file).take(size - offset);
        let r = tokio::io::copy(&mut limited, &mut wr).await;
        let _ = wr.shutdown().await;
        r
    };
    let mut bar = Progress::sized(progress, offset, size);
    let (acked, failed) = {
        let mut lines = BufReader::new(rd).lines();
        let receive = async {
            let mut acked = offset;
            while let Some(line) = lines.next_line().await.map_err(|e| CopyError::Answer(e.to_string()))? {
                let e: PutEvent = serde_json::from_str(&line).map_err(|e| CopyError::Answer(e.to_string()))?;
                acked = e.acked;
                bar.update(acked);
                if e.done {
                    return Ok((acked, e.error));
                }
            }
            Ok::<_, CopyError>((acked, Some("the node closed the connection before the end".to_string())))
        };
        tokio::pin!(send);
        tokio::pin!(receive);
        // The node's last line may come while the file is still being sent (it failed): it wins.
        tokio::select! {
            r = &mut receive => r?,
            sent = &mut send => {
                let sent = sent.map_err(|e| CopyError::Stopped {
                    why: format!("sending {}: {e}", path.display()), done: offset, total: size,
                });
                let r = receive.await?;
                if let (Err(e), None) = (sent, &r.1) {
                    return Err(e);
                }
                r
            }
        }
    };
    bar.finish(acked);
    match failed {
        None => Ok(PutReport { size, skipped: offset, written: size - offset }),
        Some(why) => Err(CopyError::Stopped { why, done: acked, total: size }),
    }
}

/// How much of the start of `path` (of `size` bytes) the export already holds, in whole [`COMPARE_BLOCK`]s (all
/// of it if it all matches).
async fn equal_prefix(c: &Client, reference: &str, path: &Path, size: u64) -> Result<u64, CopyError> {
    let mut body = c.post_stream("/v1/file/get", &GetReq { reference: reference.to_string(), offset: 0 }).await?;
    let remote = size_of(&body)?;
    if size > remote {
        return Err(CopyError::Larger { path: path.to_path_buf(), local: size, remote, hint: "" });
    }
    let mut file = tokio::fs::File::open(path).await.map_err(local(path))?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut pending = bytes::Bytes::new();
    let mut at = 0u64;
    while at < size {
        let want = (size - at).min(COMPARE_BLOCK) as usize;
        ours.resize(want, 0);
        file.read_exact(&mut ours).await.map_err(local(path))?;
        theirs.clear();
        while theirs.len() < want {
            if pending.is_empty() {
                match body.next().await.transpose()? {
                    Some(chunk) => pending = chunk,
                    None => return Err(CopyError::Answer("the export ended before its size".into())),
                }
            }
            let take = pending.len().min(want - theirs.len());
            theirs.extend_from_slice(&pending.split_to(take));
        }
        if ours != theirs {
            break;
        }
        at += want as u64;
    }
    // Dropping the body ends the read on the node.
    Ok(at)
}
