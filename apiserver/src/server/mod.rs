//! The gRPC services: ClusterMesh (Watch, GetCluster, LookupService,
//! ListServices, Status) and Admin, every call role-checked (see `auth`).

pub mod admin;
pub mod auth;
pub mod lookup;
pub mod tls;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use clustermesh_certs::Role;
use clustermesh_proto::v1::{
    self, ClusterInfo, Kind, Scope, StatusResponse, WatchBatch, admin_server::Admin,
    cluster_mesh_server::ClusterMesh,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::store::Store;
use crate::view::View;

/// Per-replica facts shown in Status.
#[derive(Debug, Clone)]
pub struct ReplicaInfo {
    pub id: String,
}

/// Live state of this replica that other parts update (leadership, source errors).
#[derive(Default)]
pub struct Runtime {
    pub leader: std::sync::atomic::AtomicBool,
    pub source_errors: std::sync::Mutex<Vec<v1::SourceError>>,
}

#[derive(Clone)]
pub struct ApiServer {
    pub view: Arc<View>,
    pub store: Store,
    pub cluster: ClusterInfo,
    pub replica: ReplicaInfo,
    pub runtime: Arc<Runtime>,
    pub heartbeat: Duration,
    /// This cluster's CA (PEM): admin and agent certificates must chain to it.
    pub own_ca_pem: tls::SharedCa,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// This cluster's node agents and the gateways' liveness.
    pub agents: Arc<crate::agents::Agents>,
}

impl ApiServer {
    fn caller<T>(&self, req: &Request<T>) -> Result<auth::Caller, Status> {
        auth::caller(
            req,
            &self.cluster.name,
            &tls::current_ca(&self.own_ca_pem),
            |peer| admin::get(&self.view, peer).map(|p| p.ca_pem),
        )
    }

    fn peer_addr<T>(req: &Request<T>) -> String {
        req.remote_addr().map(|a| a.to_string()).unwrap_or_default()
    }

    pub fn status(&self) -> StatusResponse {
        let rt = &self.runtime;
        let agents = self.agents.statuses();
        StatusResponse {
            cluster: Some(self.cluster.clone()),
            epoch: self.view.epoch(),
            revision: self.view.revision(),
            replica: self.replica.id.clone(),
            leader: rt.leader.load(std::sync::atomic::Ordering::Relaxed),
            leader_replica: self
                .view
                .get(&clustermesh_proto::keys::leader())
                .map(|e| crate::leader::replica_of(&String::from_utf8_lossy(&e.value)).to_owned())
                .unwrap_or_default(),
            counts: self.view.counts(),
            peers: crate::mesh::status::peer_statuses(&self.view),
            watchers: self.view.watchers() as u32,
            synced: self
                .view
                .synced_kinds(&self.cluster.name)
                .into_iter()
                .map(|k| k as i32)
                .collect(),
            source_errors: rt
                .source_errors
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default(),
            ready: self.view.ready() && self.view.feed_error().is_none(),
            store_refused_records: self.store.refused_records(),
            gateways: crate::agents::gateway_statuses(&self.view, &agents),
            agents,
        }
    }
}

#[tonic::async_trait]
impl ClusterMesh for ApiServer {
    type WatchStream = ReceiverStream<Result<WatchBatch, Status>>;

    async fn watch(
        &self,
        req: Request<v1::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.caller(&req)?;
        let peer = format!("{caller} at {}", Self::peer_addr(&req));
        // A peer's stream lasts only while the peer stays registered and its
        // CA still vouches for the certificate it connected with.
        let revalidate = (caller.role == Role::Remote && caller.cluster != self.cluster.name)
            .then(|| {
                let leaf = req.peer_certs().and_then(|c| c.first().map(|c| c.as_ref().to_vec()));
                let (view, cluster) = (self.view.clone(), caller.cluster.clone());
                let local = self.cluster.name.clone();
                Box::new(move || -> Option<String> {
                    let Some(p) = admin::get(&view, &cluster) else {
                        return Some(format!("cluster {cluster} is no longer a registered peer of {local}"));
                    };
                    let ok = leaf.as_deref().is_some_and(|l| clustermesh_certs::issued_by(l, &p.ca_pem).unwrap_or(false));
                    (!ok).then(|| format!("the CA registered for peer {cluster} no longer vouches for this certificate"))
                }) as watch::Revalidate
            });
        let r = req.into_inner();
        let scope = Scope::try_from(r.scope).unwrap_or(Scope::Unspecified);
        match scope {
            Scope::Exported => auth::require(
                &caller,
                &[Role::Admin, Role::Remote, Role::Agent],
                "watch scope exported",
            )?,
            Scope::Merged => {
                auth::require(&caller, &[Role::Admin, Role::Agent], "watch scope merged")?
            }
            Scope::Unspecified => {
                return Err(Status::invalid_argument(
                    "watch scope must be SCOPE_EXPORTED or SCOPE_MERGED",
                ));
            }
        }
        let mut kinds = Vec::with_capacity(r.kinds.len());
        for k in r.kinds {
            match Kind::try_from(k) {
                Ok(kind) if kind != Kind::Unspecified => kinds.push(kind),
                _ => return Err(Status::invalid_argument(format!("unknown record kind {k}"))),
            }
        }
        if !self.view.ready() {
            return Err(Status::unavailable(
                "the apiserver has not loaded its store yet; retry",
            ));
        }
        let resume = r.resume.as_ref().map(|p| (p.epoch.as_str(), p.revision));
        let sub = self.view.subscribe(scope, &kinds, resume);
        let (tx, rx) = mpsc::channel(16);
        let pump = watch::Pump {
            view: self.view.clone(),
            sub,
            scope,
            kinds,
            cluster: self.cluster.clone(),
            heartbeat: self.heartbeat,
            peer,
            revalidate,
            metrics: self.metrics.clone(),
        };
        tokio::spawn(pump.run(tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_cluster(
        &self,
        req: Request<v1::GetClusterRequest>,
    ) -> Result<Response<ClusterInfo>, Status> {
        self.caller(&req)?;
        Ok(Response::new(self.cluster.clone()))
    }

    async fn lookup_service(
        &self,
        req: Request<v1::LookupServiceRequest>,
    ) -> Result<Response<v1::LookupServiceResponse>, Status> {
        let caller = self.caller(&req)?;
        auth::require(&caller, &[Role::Admin, Role::Agent], "look up services")?;
        let r = req.into_inner();
        lookup::lookup(&self.view, &r.namespace, &r.name)
            .map(Response::new)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "service {}/{} is not known in this cluster or its peers",
                    r.namespace, r.name
                ))
            })
    }

    async fn list_services(
        &self,
        req: Request<v1::ListServicesRequest>,
    ) -> Result<Response<v1::ListServicesResponse>, Status> {
        let caller = self.caller(&req)?;
        auth::require(&caller, &[Role::Admin, Role::Agent], "list services")?;
        let services = lookup::list(&self.view, req.get_ref().global_only);
        Ok(Response::new(v1::ListServicesResponse { services }))
    }

    async fn status(
        &self,
        req: Request<v1::StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let caller = self.caller(&req)?;
        auth::require(&caller, &[Role::Admin, Role::Agent], "read status")?;
        Ok(Response::new(self.status()))
    }

    async fn report_agent(
        &self,
        req: Request<v1::AgentReport>,
    ) -> Result<Response<v1::ReportAgentResponse>, Status> {
        let caller = self.caller(&req)?;
        auth::require(&caller, &[Role::Agent], "report as a node agent")?;
        let report = req.into_inner();
        let interval = self
            .agents
            .record(&self.store, &report)
            .await
            .map_err(|e| match e {
                crate::agents::RecordError::Invalid(m) => {
                    Status::invalid_argument(format!("agent report refused: {m}"))
                }
                e @ crate::agents::RecordError::Store(_) => Status::unavailable(e.to_string()),
            })?;
        Ok(Response::new(v1::ReportAgentResponse {
            report_interval_ms: interval.as_millis() as u32,
        }))
    }
}

#[tonic::async_trait]
impl Admin for ApiServer {
    async fn connect_peer(
        &self,
        req: Request<v1::ConnectPeerRequest>,
    ) -> Result<Response<v1::ConnectPeerResponse>, Status> {
        auth::require(&self.caller(&req)?, &[Role::Admin], "connect peers")?;
        let peer = req
            .into_inner()
            .peer
            .ok_or_else(|| Status::invalid_argument("ConnectPeer needs a peer"))?;
        admin::connect(&self.store, &self.view, &self.cluster, peer).await?;
        Ok(Response::new(v1::ConnectPeerResponse {
            cluster: Some(self.cluster.clone()),
        }))
    }

    async fn disconnect_peer(
        &self,
        req: Request<v1::DisconnectPeerRequest>,
    ) -> Result<Response<v1::DisconnectPeerResponse>, Status> {
        auth::require(&self.caller(&req)?, &[Role::Admin], "disconnect peers")?;
        let existed = admin::disconnect(&self.store, &self.view, &req.get_ref().name).await?;
        Ok(Response::new(v1::DisconnectPeerResponse { existed }))
    }

    async fn list_peers(
        &self,
        req: Request<v1::ListPeersRequest>,
    ) -> Result<Response<v1::ListPeersResponse>, Status> {
        auth::require(&self.caller(&req)?, &[Role::Admin], "list peers")?;
        Ok(Response::new(v1::ListPeersResponse {
            peers: admin::list(&self.view),
        }))
    }
}
