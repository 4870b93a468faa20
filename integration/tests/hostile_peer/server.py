#!/usr/bin/env python3
"""A hostile clustermesh peer for tests: a minimal gRPC server that is not
the project's own server code. It compiles the repository's .proto with
grpc_tools.protoc into a temporary directory, encodes the records it is
given (JSON, field names as in the .proto) with the generated Python
classes, and serves GetCluster and Watch(scope exported) over mTLS.

Usage:
  server.py --proto-root DIR --port N --cert server.crt --key server.key \
            --client-ca ca.crt --spec spec.json --ready-file PATH

spec.json:
  {"cluster": {"name": "alpha", "id": 1, "max_connected_clusters": 255},
   "epoch": "e1",
   "heartbeat_ms": 200,
   "snapshot": [[REC, ...], ...],     # one SNAPSHOT batch per inner list
   "snapshot_synced": ["KIND_NODE", ...],
   "later": [REC, ...],               # one EVENTS batch after the snapshot,
   "later_synced": ["KIND_NODE"],     #   sent once release_file exists
   "release_file": "/path",
   "cut_file": "/path"}               # once it exists, the open Watch stream
                                      #   is cut (once): the client resends
  REC = {"kind": "KIND_ENDPOINT", "key": "10.1.0.5", "record": {...}}
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent import futures


def compile_proto(proto_root, out):
    import grpc_tools
    from grpc_tools import protoc

    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main([
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "clustermesh/v1/clustermesh.proto",
    ])
    if rc != 0:
        raise SystemExit(f"protoc failed with {rc}")
    sys.path.insert(0, out)


def main():
    ap = argparse.ArgumentParser()
    for a in ["--proto-root", "--cert", "--key", "--client-ca", "--spec", "--ready-file"]:
        ap.add_argument(a, required=True)
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()

    gen = tempfile.mkdtemp(prefix="hostile-peer-proto-")
    compile_proto(args.proto_root, gen)
    import grpc
    from google.protobuf import json_format
    from clustermesh.v1 import clustermesh_pb2 as pb
    from clustermesh.v1 import clustermesh_pb2_grpc as pbg

    with open(args.spec) as f:
        spec = json.load(f)
    info = json_format.ParseDict(spec["cluster"], pb.ClusterInfo())
    epoch = spec.get("epoch", "hostile-epoch")
    heartbeat = spec.get("heartbeat_ms", 200) / 1000.0
    classes = {
        "KIND_NODE": pb.Node,
        "KIND_ENDPOINT": pb.Endpoint,
        "KIND_IDENTITY": pb.Identity,
        "KIND_SERVICE": pb.Service,
        "KIND_POLICY": pb.Policy,
        "KIND_SERVICE_BACKEND": pb.ServiceBackend,
    }

    def upsert(rec, revision):
        msg = json_format.ParseDict(rec["record"], classes[rec["kind"]]())
        return pb.Event(
            type=pb.EVENT_TYPE_UPSERT,
            kind=pb.Kind.Value(rec["kind"]),
            cluster=info.name,
            key=rec["key"],
            value=msg.SerializeToString(),
            revision=revision,
        )

    def synced(kind, revision):
        marker = pb.SyncedMarker(cluster=info.name, kind=pb.Kind.Value(kind), unix_millis=1)
        return pb.Event(
            type=pb.EVENT_TYPE_SYNCED,
            kind=pb.Kind.Value(kind),
            cluster=info.name,
            value=marker.SerializeToString(),
            revision=revision,
        )

    release = spec.get("release_file")
    cut_file = spec.get("cut_file")
    cut = threading.Event()

    def released():
        return bool(release) and os.path.exists(release)

    class Peer(pbg.ClusterMeshServicer):
        def GetCluster(self, request, context):
            return info

        def Watch(self, request, context):
            if request.scope != pb.SCOPE_EXPORTED:
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "only scope exported")
            later_sent = released()
            chunks = [list(c) for c in spec.get("snapshot", [])] or [[]]
            synced_kinds = list(spec.get("snapshot_synced", []))
            if later_sent:
                chunks.append(list(spec.get("later", [])))
                synced_kinds += spec.get("later_synced", [])
            revision = 11 if later_sent else 10
            yield pb.WatchBatch(type=pb.BATCH_TYPE_SNAPSHOT_BEGIN, epoch=epoch, revision=revision,
                                reset=request.HasField("resume"), cluster=info)
            for i, chunk in enumerate(chunks):
                events = [upsert(r, revision) for r in chunk]
                if i == len(chunks) - 1:
                    events += [synced(k, revision) for k in synced_kinds]
                yield pb.WatchBatch(type=pb.BATCH_TYPE_SNAPSHOT, epoch=epoch, revision=revision,
                                    events=events)
            yield pb.WatchBatch(type=pb.BATCH_TYPE_SNAPSHOT_END, epoch=epoch, revision=revision)
            while context.is_active():
                time.sleep(heartbeat)
                if cut_file and os.path.exists(cut_file) and not cut.is_set():
                    cut.set()
                    context.abort(grpc.StatusCode.UNAVAILABLE, "stream cut by the test")
                if not later_sent and released():
                    later_sent = True
                    revision = 11
                    events = [upsert(r, revision) for r in spec.get("later", [])]
                    events += [synced(k, revision) for k in spec.get("later_synced", [])]
                    yield pb.WatchBatch(type=pb.BATCH_TYPE_EVENTS, epoch=epoch, revision=revision,
                                        events=events)
                yield pb.WatchBatch(type=pb.BATCH_TYPE_HEARTBEAT, epoch=epoch, revision=revision)

    def read(p):
        with open(p, "rb") as f:
            return f.read()

    creds = grpc.ssl_server_credentials(
        [(read(args.key), read(args.cert))],
        root_certificates=read(args.client_ca),
        require_client_auth=True,
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pbg.add_ClusterMeshServicer_to_server(Peer(), server)
    server.add_secure_port(f"127.0.0.1:{args.port}", creds)
    server.start()
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(args.port))
    os.rename(tmp, args.ready_file)
    print(f"hostile peer {info.name} serving on 127.0.0.1:{args.port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
