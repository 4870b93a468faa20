//! A one-sided disconnect: A removes B. B's open Watch stream into A is cut
//! (A no longer trusts B), B shows A disconnected with the reason, and B
//! cannot reconnect until A registers it again.

use std::time::Duration;

use crate::mesh_support::*;
use clustermesh_proto::v1::{DisconnectPeerRequest, admin_client::AdminClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_peer_stream_is_cut() {
    let a = start("side-a", 1, "0").await;
    let b = start("side-b", 2, "0").await;
    connect(&a, &b).await;
    wait_status(&b, "side-a", "B connected to A", T, |s| s.connected).await;

    // A alone forgets B.
    let ch = a
        .api()
        .channel(clustermesh_certs::Role::Admin)
        .await
        .unwrap();
    AdminClient::new(ch)
        .disconnect_peer(DisconnectPeerRequest {
            name: "side-b".into(),
        })
        .await
        .unwrap();

    // B's stream into A ends (within a heartbeat interval of A) and B cannot get back in.
    let s = wait_status(
        &b,
        "side-a",
        "B sees A refuse it",
        Duration::from_secs(10),
        |s| !s.connected && !s.last_error.is_empty(),
    )
    .await;
    assert!(
        s.last_error.contains("no longer a registered peer")
            || s.last_error.contains("UnknownCA")
            || s.last_error.contains("CA"),
        "the reason is shown: {}",
        s.last_error
    );
    assert!(
        a.api().child.log().contains("access revoked"),
        "A logged the cut"
    );

    // Re-registering B on A lets it back in.
    register(&a, peer_config(&b)).await.unwrap();
    wait_status(
        &b,
        "side-a",
        "B reconnected",
        Duration::from_secs(20),
        |s| s.connected,
    )
    .await;
}
