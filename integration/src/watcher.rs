//! A test-side Watch client: opens a stream, applies every batch to a
//! [`Mirror`] and keeps the raw batches for assertions.

use std::time::Duration;

use anyhow::{Context, bail};
use clustermesh_proto::mirror::Mirror;
use clustermesh_proto::v1::{
    Kind, ResumePoint, Scope, WatchBatch, WatchRequest, cluster_mesh_client::ClusterMeshClient,
};
use tonic::Streaming;
use tonic::transport::Channel;

pub struct Watcher {
    stream: Streaming<WatchBatch>,
    pub mirror: Mirror,
    pub batches: Vec<WatchBatch>,
    pub ended: bool,
}

impl Watcher {
    pub async fn open(
        channel: Channel,
        scope: Scope,
        kinds: &[Kind],
        resume: Option<ResumePoint>,
    ) -> Result<Watcher, tonic::Status> {
        Self::open_with(channel, scope, kinds, resume, Mirror::new()).await
    }

    /// Opens with an existing mirror (to resume into it).
    pub async fn open_with(
        channel: Channel,
        scope: Scope,
        kinds: &[Kind],
        resume: Option<ResumePoint>,
        mirror: Mirror,
    ) -> Result<Watcher, tonic::Status> {
        let mut client = ClusterMeshClient::new(channel).max_decoding_message_size(64 << 20);
        let req = WatchRequest {
            kinds: kinds.iter().map(|k| *k as i32).collect(),
            scope: scope as i32,
            resume,
        };
        let stream = client.watch(req).await?.into_inner();
        Ok(Watcher {
            stream,
            mirror,
            batches: Vec::new(),
            ended: false,
        })
    }

    /// The next batch (applied to the mirror), None when the stream ended.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<WatchBatch>> {
        let msg = tokio::time::timeout(timeout, self.stream.message())
            .await
            .context("no watch batch within the timeout")?
            .map_err(|s| anyhow::anyhow!("watch stream failed: {s}"))?;
        match msg {
            Some(b) => {
                self.mirror.apply(&b);
                self.batches.push(b.clone());
                Ok(Some(b))
            }
            None => {
                self.ended = true;
                Ok(None)
            }
        }
    }

    /// Reads batches until `done(mirror)` holds.
    pub async fn until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Mirror) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&self.mirror) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                bail!("timed out waiting for {what}");
            }
            if self.next(left).await?.is_none() {
                bail!("stream ended while waiting for {what}");
            }
        }
        Ok(())
    }

    /// Reads until the stream ends; fails if it has not ended within `timeout`.
    pub async fn drain(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                bail!("the stream did not end within {timeout:?}");
            }
            if self.next(left).await?.is_none() {
                return Ok(());
            }
        }
    }
}
