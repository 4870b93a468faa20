//! etcd clients for the harness's etcd clusters. The clusters themselves are
//! started by `clustermesh-localmesh` (re-exported here), which the CLI's
//! demo shares; the clients live here so that the CLI does not link etcd-client.

use std::time::Duration;

use anyhow::{Context, ensure};
use etcd_client::{Client, ConnectOptions};

pub use clustermesh_localmesh::etcd::*;

/// etcd clients for an [`EtcdCluster`].
#[allow(async_fn_in_trait)]
pub trait EtcdClients {
    /// A client connected to the endpoints of all *running* members (see
    /// [`EtcdCluster::running_endpoints`]). A client created *before* a member was killed sees
    /// intermittent errors; use [`EtcdClients::client_all_endpoints`] to reproduce that on purpose.
    async fn client(&self) -> anyhow::Result<Client>;
    /// A client connected to every member's endpoint, including stopped ones.
    async fn client_all_endpoints(&self) -> anyhow::Result<Client>;
    /// A client connected to member `i` only.
    async fn member_client(&self, i: usize) -> anyhow::Result<Client>;
}

impl EtcdClients for EtcdCluster {
    async fn client(&self) -> anyhow::Result<Client> {
        connect(&self.running_endpoints()).await
    }

    async fn client_all_endpoints(&self) -> anyhow::Result<Client> {
        connect(&self.endpoints()).await
    }

    async fn member_client(&self, i: usize) -> anyhow::Result<Client> {
        ensure!(
            i < self.member_count(),
            "etcd member index {i} out of range (cluster has {} members)",
            self.member_count()
        );
        connect(&[self.member_endpoint(i)]).await
    }
}

async fn connect(endpoints: &[String]) -> anyhow::Result<Client> {
    let opts = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
    Client::connect(endpoints, Some(opts))
        .await
        .with_context(|| format!("connecting etcd client to {}", endpoints.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn single_member_starts_and_serves() {
        let c = EtcdCluster::start(1).await.unwrap();
        let mut client = c.client().await.unwrap();
        client.put("k", "v", None).await.unwrap();
        let r = client.get("k", None).await.unwrap();
        assert_eq!(r.kvs()[0].value(), b"v");
        assert!(c.member_client(3).await.is_err());
    }
}
