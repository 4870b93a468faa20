//! Paged prefix reads. No read of the store is one whole-prefix request: a
//! prefix is read in pages of at most [`PAGE_KEYS`] keys, each page continued
//! from the last key + `"\0"`, every page after the first at the revision of
//! the first, so the pages together are one consistent snapshot.
//!
//! Why the page size keeps a response under the client's 4 MiB gRPC receive
//! limit: our records are a few hundred bytes with their keys (an endpoint
//! ≈ 190 B, a node ≈ 270 B), so 10,000 keys are 2–3 MiB. Records can be bigger (a
//! service with many backends, up to [`super::MAX_RECORD_BYTES`]), so a page
//! that the client refuses as too large is read again with half the limit,
//! down to one key; one key is always under the limit because no write puts
//! more than [`super::MAX_RECORD_BYTES`] (1 MiB) in one record.

use bytes::Bytes;
use etcd_client::GetOptions;
use tracing::debug;

use super::{Kv, Store, StoreError};

/// Keys per page (etcd range `limit`). Large, because etcd answers every
/// page of a range by walking its index over the whole rest of the range
/// (to count it), so reading n keys costs ~n²/(2·PAGE_KEYS) index steps: at
/// 1,000 keys a page the 300,000-record view took 8.8 s to load.
pub const PAGE_KEYS: i64 = 10_000;

/// Receive limit of the view feed's watch stream. etcd puts up to 1,000
/// revisions in one watch response when a watcher catches up (each revision
/// is one transaction, at most [`super::MAX_TXN_BYTES`]), which the client's
/// default 4 MiB would refuse, failing the feed forever; etcd-client does not
/// expose watch fragments, so the limit is raised instead.
const WATCH_RECEIVE_BYTES: usize = 256 * 1024 * 1024;

/// How many times [`Store::list`] starts over when the revision it reads at
/// is compacted under it.
const COMPACTED_RETRIES: usize = 3;

/// The first key after every key starting with `prefix` (etcd's range end).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff (or the prefix is empty): to the end of the keyspace.
    vec![0]
}

impl Store {
    /// Reads every key under `prefix` page by page, handing each page to
    /// `page` in key order. Returns the revision every page was read at.
    /// Fails with [`StoreError::Compacted`] if that revision is compacted
    /// before the last page is read (the pages handed over so far belong to
    /// the failed read; start over).
    pub async fn list_pages(
        &self,
        prefix: &str,
        mut page: impl FnMut(Vec<Kv>),
    ) -> Result<i64, StoreError> {
        let end = prefix_end(prefix.as_bytes());
        let mut from = prefix.as_bytes().to_vec();
        let mut revision = 0i64;
        let mut limit = PAGE_KEYS;
        let mut pages = 0usize;
        let mut c = self.client().kv_client();
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let mut resp = match c.get(from.clone(), Some(opts)).await {
                Ok(r) => r,
                Err(e) if too_large(&e) && limit > 1 => {
                    limit = (limit / 2).max(1);
                    debug!(
                        prefix,
                        limit, "store page too large for the client; halving it"
                    );
                    continue;
                }
                Err(e) if compacted(&e) => {
                    return Err(StoreError::Compacted {
                        prefix: prefix.to_owned(),
                        revision,
                    });
                }
                Err(e) => return Err(self.err(e)),
            };
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            pages += 1;
            if let Some(last) = kvs.last() {
                from = last.key().to_vec();
                from.push(0);
            }
            let done = !more || kvs.is_empty();
            page(
                kvs.into_iter()
                    .map(|kv| Kv {
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        mod_revision: kv.mod_revision(),
                        value: Bytes::copy_from_slice(kv.value()),
                    })
                    .collect(),
            );
            if done {
                debug!(prefix, pages, revision, "store prefix read");
                return Ok(revision);
            }
            // A small page after a too-large one: try the full size again.
            limit = (limit * 2).min(PAGE_KEYS);
        }
    }

    /// Every key under `prefix` (read in pages, see [`Store::list_pages`]),
    /// with the one store revision the whole list was read at. Starts over
    /// (a few times) when that revision is compacted during the read.
    pub async fn list(&self, prefix: &str) -> Result<(i64, Vec<Kv>), StoreError> {
        let mut attempt = 0;
        loop {
            let mut all = Vec::new();
            match self.list_pages(prefix, |p| all.extend(p)).await {
                Ok(rev) => return Ok((rev, all)),
                Err(StoreError::Compacted { .. }) if attempt < COMPACTED_RETRIES => {
                    attempt += 1;
                    debug!(
                        prefix,
                        attempt, "store revision compacted during a paged read; starting over"
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A watch client whose receive limit fits etcd's catch-up responses.
    pub(crate) fn watch_client(&self) -> etcd_client::WatchClient {
        self.client()
            .watch_client()
            .max_decoding_message_size(WATCH_RECEIVE_BYTES)
    }

    /// One key, if present.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        let mut c = self.client();
        let resp = c.get(key, None).await.map_err(|e| self.err(e))?;
        Ok(resp.kvs().first().map(|kv| Kv {
            key: key.to_owned(),
            mod_revision: kv.mod_revision(),
            value: Bytes::copy_from_slice(kv.value()),
        }))
    }

    /// The current store revision.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        let mut c = self.client();
        let resp = c
            .get(
                clustermesh_proto::keys::meta_epoch(),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(|e| self.err(e))?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }
}

fn status(e: &etcd_client::Error) -> Option<&tonic::Status> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some(s),
        _ => None,
    }
}

/// The client refused a response bigger than its gRPC receive limit.
fn too_large(e: &etcd_client::Error) -> bool {
    status(e).is_some_and(|s| {
        s.code() == tonic::Code::OutOfRange && s.message().contains("message length too large")
    })
}

/// etcd's `ErrCompacted` ("mvcc: required revision has been compacted").
fn compacted(e: &etcd_client::Error) -> bool {
    status(e).is_some_and(|s| s.message().contains("has been compacted"))
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(b"a/b/"), b"a/b0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
