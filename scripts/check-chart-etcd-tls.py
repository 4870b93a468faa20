#!/usr/bin/env python3
"""The chart's etcd is no open door, shown with real processes.

Takes the objects `helm template` rendered (argv[1]) and:
  1. writes the generated etcd PKI Secret to files, the way the kubelet would
     mount it (the volumes' `items`);
  2. starts a real etcd with the StatefulSet's own arguments (hosts, ports and
     paths mapped onto loopback and the temp dir, nothing else changed);
  3. checks that a client without a certificate is refused and one with the
     apiserver's certificate is served;
  4. starts the real clustermesh-apiserver (argv[2]) with the Deployment's
     --etcd-* arguments and its own PKI (argv[3]: the clustermesh CLI) and
     waits for /readyz.
Prints `etcd-tls: N passed, M failed` and exits non-zero on a failure.
"""
import base64
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

rendered, apiserver_bin, cli_bin = sys.argv[1], sys.argv[2], sys.argv[3]
docs = [d for d in yaml.safe_load_all(open(rendered)) if d]


def one(kind, suffix):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    if len(found) != 1:
        sys.exit(f"etcd-tls: expected one {kind} named *{suffix}, found {len(found)}")
    return found[0]


secret = one("Secret", "-etcd-tls")
sts = one("StatefulSet", "-etcd")
deploy = one("Deployment", "-apiserver")
etcd_name = sts["metadata"]["name"]
namespace = sts["metadata"]["namespace"]
work = tempfile.mkdtemp(prefix="chart-etcd-tls-")
procs = []
passed = failed = 0


def check(ok, what):
    global passed, failed
    print(("ok: " if ok else "FAIL: ") + what, flush=True)
    if ok:
        passed += 1
    else:
        failed += 1


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mount(volume, where):
    """Writes a secret volume's items under `where`, as the kubelet mounts them."""
    os.makedirs(where, exist_ok=True)
    data = secret["data"]
    items = volume["secret"].get("items") or [{"key": k, "path": k} for k in data]
    for item in items:
        with open(os.path.join(where, item["path"]), "wb") as f:
            f.write(base64.b64decode(data[item["key"]]))
    return where


def volume(pod_spec, name):
    return next(v for v in pod_spec["volumes"] if v["name"] == name)


def mount_path(container, name):
    return next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == name)


def wait(what, probe, timeout=30):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            if probe():
                return True
        except Exception as e:  # noqa: BLE001 - the last error is reported
            last = e
        time.sleep(0.2)
    print(f"  gave up waiting for {what}: {last}", flush=True)
    return False


try:
    # 1+2: etcd as the StatefulSet starts it.
    pod = sts["spec"]["template"]["spec"]
    etcd_c = next(c for c in pod["containers"] if c["name"] == "etcd")
    tls_dir = mount(volume(pod, "tls"), os.path.join(work, "etcd-tls"))
    ports = {
        str(p["containerPort"]): str(free_port()) for p in etcd_c["ports"]
    }
    member = f"{etcd_name}-0"
    args = []
    for a in etcd_c["args"]:
        a = a.replace(mount_path(etcd_c, "tls"), tls_dir)
        a = a.replace(mount_path(etcd_c, "data"), os.path.join(work, "data"))
        a = a.replace(f"$(POD_NAME).{etcd_name}.$(POD_NAMESPACE).svc", "localhost")
        a = a.replace(f"{member}.{etcd_name}.{namespace}.svc", "localhost")
        a = a.replace("$(POD_NAME)", member).replace("0.0.0.0", "127.0.0.1")
        for port, local in ports.items():
            a = a.replace(f":{port}", f":{local}")
        args.append(a)
    client_port = ports[str(next(p["containerPort"] for p in etcd_c["ports"] if p["name"] == "client"))]
    metrics_port = ports[str(next(p["containerPort"] for p in etcd_c["ports"] if p["name"] == "metrics"))]
    etcd_log = open(os.path.join(work, "etcd.log"), "w")
    procs.append(subprocess.Popen([shutil.which("etcd") or "/usr/bin/etcd", *args], stdout=etcd_log, stderr=etcd_log))
    up = wait("etcd /health", lambda: b'"health":"true"' in urllib.request.urlopen(
        f"http://127.0.0.1:{metrics_port}/health", timeout=2).read())
    check(up, "etcd starts with the StatefulSet's TLS arguments and the generated Secret")
    if not up:
        print(open(os.path.join(work, "etcd.log")).read()[-3000:])
        raise SystemExit(1)

    # 3: who may talk to it.
    def get_version(cert):
        ctx = ssl.create_default_context(cafile=os.path.join(tls_dir, "ca.crt"))
        if cert:
            ctx.load_cert_chain(*cert)
        with socket.create_connection(("127.0.0.1", int(client_port)), timeout=3) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b"GET /version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                return s.recv(4096)

    try:
        answer = get_version(None)
        check(False, f"a client without a certificate is refused (it was answered: {answer[:60]!r})")
    except (ssl.SSLError, ConnectionError) as e:
        check(True, f"a client without a certificate is refused ({type(e).__name__}: {e})")

    dcontainer = deploy["spec"]["template"]["spec"]["containers"][0]
    client_dir = mount(volume(deploy["spec"]["template"]["spec"], "etcd-tls"), os.path.join(work, "apiserver-etcd-tls"))
    answer = get_version((os.path.join(client_dir, "tls.crt"), os.path.join(client_dir, "tls.key")))
    check(answer.startswith(b"HTTP/1.1 200"), "the apiserver's client certificate is served")

    # 4: the apiserver with the Deployment's etcd arguments.
    etcd_args = []
    for a in dcontainer["args"]:
        if not a.startswith("--etcd-"):
            continue
        a = a.replace(mount_path(dcontainer, "etcd-tls"), client_dir)
        if a.startswith("--etcd-endpoints="):
            a = f"--etcd-endpoints=https://localhost:{client_port}"
        etcd_args.append(a)
    check(any(a.startswith("--etcd-cert-file=") for a in etcd_args), "the Deployment passes an etcd client certificate")
    pki = os.path.join(work, "pki")
    subprocess.run([cli_bin, "certs", "init", "--cluster", "east", "--out", pki], check=True, stdout=subprocess.DEVNULL)
    health = free_port()
    api_log = open(os.path.join(work, "apiserver.log"), "w")
    procs.append(subprocess.Popen([
        apiserver_bin, "--cluster-name", "east", "--cluster-id", "1", *etcd_args,
        "--tls-dir", pki, "--listen", f"127.0.0.1:{free_port()}", "--health-listen", f"127.0.0.1:{health}",
    ], stdout=api_log, stderr=api_log))
    ready = wait("apiserver /readyz", lambda: urllib.request.urlopen(
        f"http://127.0.0.1:{health}/readyz", timeout=2).status == 200)
    check(ready, "the apiserver reaches the chart's etcd over client-certificate TLS (/readyz 200)")
    if not ready:
        print(open(os.path.join(work, "apiserver.log")).read()[-3000:])
finally:
    for p in procs:
        p.kill()
        p.wait()
    shutil.rmtree(work, ignore_errors=True)

print(f"etcd-tls: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
