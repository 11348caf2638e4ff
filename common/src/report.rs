//! Report streams: how state travels up the tiers.
//!
//! A child (NC, CC, SC, Walrus) keeps one bidirectional stream open to its
//! parent. It sends its whole current report first, then again whenever it
//! changes, and as a heartbeat when nothing changed for a while. The parent
//! acknowledges each report; the child re-opens the stream (with backoff)
//! when it ends, fails, or is not acknowledged in time. The parent marks the
//! child NOTREADY as soon as the stream ends, or when reports stop coming.

use std::{
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::sync::{mpsc, watch};
use tokio_stream::{wrappers::ReceiverStream, Stream, StreamExt};
use tonic::{Code, Response, Status, Streaming};

use crate::{
    pki::Role,
    rpc::{Client, Trust},
};
use proto::{ClusterReport, NodeReport, ReportAck, ServiceReport};

/// A report message: carries a sequence number within its stream.
pub trait Report: Clone + Send + Sync + 'static {
    /// Sets the sequence number before sending.
    fn set_seq(&mut self, seq: u64);
    /// The sequence number.
    fn seq(&self) -> u64;
}

macro_rules! impl_report {
    ($($t:ty),*) => {$(
        impl Report for $t {
            fn set_seq(&mut self, seq: u64) { self.seq = seq; }
            fn seq(&self) -> u64 { self.seq }
        }
    )*};
}
impl_report!(NodeReport, ClusterReport, ServiceReport);

/// How a child reports to its parent.
#[derive(Clone, Debug)]
pub struct ReportSettings {
    /// The parent's gRPC endpoint (`host:port`).
    pub parent: String,
    /// Shown in logs: "cluster controller", "cloud controller".
    pub parent_kind: &'static str,
    /// The parent's role, which its certificate must name.
    pub parent_role: Role,
    /// How this component proves itself.
    pub trust: Trust,
    /// Send the report again after this long without a change.
    pub heartbeat: Duration,
}

/// Keeps the report stream to the parent open for as long as the future runs.
///
/// `open` starts the RPC on a fresh channel with the stream of reports to send.
pub async fn keep_reporting<M, F, Fut, S>(
    settings: ReportSettings,
    updates: watch::Receiver<M>,
    mut open: F,
) where
    M: Report,
    F: FnMut(Client, ReceiverStream<M>) -> Fut,
    Fut: Future<Output = Result<Response<S>, Status>>,
    S: Stream<Item = Result<ReportAck, Status>> + Unpin,
{
    let mut backoff = Duration::from_millis(200);
    let mut joined_once = false;
    let mut last_problem = String::new();
    loop {
        let problem = match settings
            .trust
            .connect(&settings.parent, settings.parent_role)
            .await
        {
            Err(e) => format!(
                "cannot reach {} at {}: {e}",
                settings.parent_kind, settings.parent
            ),
            Ok(channel) => {
                let (tx, rx) = mpsc::channel(4);
                let pump = tokio::spawn(pump(updates.clone(), tx, settings.heartbeat));
                let outcome = match open(channel, ReceiverStream::new(rx)).await {
                    Err(status) => Err(status),
                    Ok(response) => {
                        let mut acks = response.into_inner();
                        // Two missed heartbeats and the parent counts as gone.
                        let patience = settings.heartbeat * 3;
                        let mut acked = 0u64;
                        loop {
                            match tokio::time::timeout(patience, acks.next()).await {
                                Err(_) => {
                                    break Err(Status::deadline_exceeded("no acknowledgement"))
                                }
                                Ok(None) => break Ok(()),
                                Ok(Some(Err(status))) => break Err(status),
                                Ok(Some(Ok(_ack))) => {
                                    acked += 1;
                                    if acked == 1 {
                                        backoff = Duration::from_millis(200);
                                        last_problem.clear();
                                        tracing::info!(
                                            parent = %settings.parent,
                                            rejoined = joined_once,
                                            "joined {}", settings.parent_kind
                                        );
                                        joined_once = true;
                                    }
                                }
                            }
                        }
                    }
                };
                pump.abort();
                match outcome {
                    Ok(()) => format!("{} closed the report stream", settings.parent_kind),
                    Err(status) if status.code() == Code::Unauthenticated => format!(
                        "refused by {} at {}: {} (is cluster_secret_file the cloud's secret?)",
                        settings.parent_kind,
                        settings.parent,
                        status.message()
                    ),
                    Err(status) => format!(
                        "report stream to {} failed: {}: {}",
                        settings.parent_kind,
                        status.code(),
                        status.message()
                    ),
                }
            }
        };
        // Say each distinct problem once, not on every retry.
        if problem != last_problem {
            if problem.contains("refused") {
                tracing::error!(parent = %settings.parent, "{problem}");
            } else {
                tracing::warn!(parent = %settings.parent, "{problem}");
            }
            last_problem = problem;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Feeds the stream: the current report now, then on every change and heartbeat.
async fn pump<M: Report>(
    mut updates: watch::Receiver<M>,
    tx: mpsc::Sender<M>,
    heartbeat: Duration,
) {
    let mut seq = 0u64;
    loop {
        seq += 1;
        let mut report = updates.borrow_and_update().clone();
        report.set_seq(seq);
        if tx.send(report).await.is_err() {
            return;
        }
        tokio::select! {
            changed = updates.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(heartbeat) => {}
        }
    }
}

static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

/// Identifies one accepted report stream, so that the end of a stream that
/// was already replaced by a newer one does not mark its sender NOTREADY.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StreamId(pub u64);

/// Parent side: runs `on_report` for each report and acknowledges it, then
/// `on_end` once when the stream ends (cleanly or not). An error from
/// `on_report` is sent to the child and ends the stream.
pub fn accept_reports<M, H, E>(
    mut inbound: Streaming<M>,
    mut on_report: H,
    on_end: E,
) -> ReceiverStream<Result<ReportAck, Status>>
where
    M: Report,
    H: FnMut(StreamId, M) -> Result<(), Status> + Send + 'static,
    E: FnOnce(StreamId, Option<Status>) + Send + 'static,
{
    let id = StreamId(NEXT_STREAM.fetch_add(1, Ordering::Relaxed));
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let end = loop {
            match inbound.message().await {
                Ok(Some(report)) => {
                    let seq = report.seq();
                    if let Err(status) = on_report(id, report) {
                        let _ = tx.send(Err(status.clone())).await;
                        break Some(status);
                    }
                    if tx.send(Ok(ReportAck { seq })).await.is_err() {
                        break None;
                    }
                }
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        };
        on_end(id, end);
    });
    ReceiverStream::new(rx)
}

/// Keeps a storage controller's or Walrus's report stream to the CLC open.
pub async fn report_service_to_clc(settings: ReportSettings, report: ServiceReport) {
    // The report of such a service does not change while it runs.
    let (_keep, updates) = watch::channel(report);
    keep_reporting(settings, updates, |client, reports| async move {
        proto::cloud_service_client::CloudServiceClient::new(client)
            .report_service(reports)
            .await
    })
    .await
}
