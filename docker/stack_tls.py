"""TLS in front of the stack when it is reachable from other hosts (docker/stack.py).

On loopback (STACK_HOST 127.0.0.1, the default) the servers listen there themselves, over plain HTTP.
Any other STACK_HOST needs TLS, or `up` refuses to start: Debian's nginx listens on STACK_HOST at the
MLflow, Prefect and S3 ports, terminates TLS and forwards to the same ports on 127.0.0.1, where the
servers then listen (PostgreSQL stays on 127.0.0.1 only). The certificate is the hospital's
(STACK_TLS_CERT and STACK_TLS_KEY, PEM; STACK_TLS_CA the chain clients verify it with, when it is not
in the system's store), or, for tests and trials, one issued for STACK_HOST by a local CA that
`python docker/stack.py ca` makes in $STACK_DIR/tls/. Clients verify it with the CA file the env file
names (MLFLOW_TRACKING_SERVER_CERT_PATH, PREFECT_API_SSL_CERT_FILE, AWS_CA_BUNDLE, REQUESTS_CA_BUNDLE,
DVC's ssl_verify). A plain-HTTP request to a TLS port gets nginx's 400, never a service's answer.
"""
from __future__ import annotations

import ipaddress
import shutil
import subprocess
import sys
from pathlib import Path

PUBLIC = ("STACK_MLFLOW_PORT", "STACK_PREFECT_PORT", "STACK_S3_PORT", "STACK_CLINIC_PORT")  # what nginx fronts (if set)


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: reachable from wherever it resolves
        return False


def inner_host(s: dict) -> str:
    """Where the servers listen: STACK_HOST on loopback, else 127.0.0.1 behind the TLS front."""
    return s["STACK_HOST"] if loopback(s["STACK_HOST"]) else "127.0.0.1"


def openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"openssl {args[0]} failed: {done.stderr.strip()[-800:]}")


def make_ca(d: Path) -> Path:
    """A local CA for tests and trials ($STACK_DIR/tls/ca.pem, its key mode 600); kept if it exists."""
    tls = d / "tls"
    tls.mkdir(parents=True, exist_ok=True)
    if not (tls / "ca.pem").exists():
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "825", "-subj", "/CN=oralscan stack local CA",
                "-keyout", str(tls / "ca.key"), "-out", str(tls / "ca.pem"))
        (tls / "ca.key").chmod(0o600)
    return tls / "ca.pem"


def issue(d: Path, host: str) -> tuple[Path, Path]:
    """A server certificate for `host` (its IP or DNS name as subjectAltName) signed by the local CA."""
    tls = d / "tls"
    cert, key, csr = tls / "server.pem", tls / "server.key", tls / "server.csr"
    san = f"IP:{host}" if not any(c.isalpha() for c in host) else f"DNS:{host}"
    ext, wanted = tls / "server.ext", f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n"
    if cert.exists() and key.exists() and ext.exists() and ext.read_text() == wanted:
        return cert, key  # issued by an earlier start for this host
    ext.write_text(wanted)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={host}", "-keyout", str(key), "-out", str(csr))
    key.chmod(0o600)
    openssl("x509", "-req", "-in", str(csr), "-CA", str(tls / "ca.pem"), "-CAkey", str(tls / "ca.key"),
            "-CAcreateserial", "-days", "397", "-extfile", str(ext), "-out", str(cert))
    return cert, key


def tls_files(s: dict, d: Path) -> dict[str, str] | None:
    """cert, key and the CA file clients verify with (empty: the system's store); None on loopback.
    Exits when STACK_HOST is reachable from other hosts and no certificate is configured."""
    if loopback(s["STACK_HOST"]):
        return None
    if s.get("STACK_TLS_CERT") and s.get("STACK_TLS_KEY"):
        for key in ("STACK_TLS_CERT", "STACK_TLS_KEY"):
            if not Path(s[key]).is_file():
                sys.exit(f"{key}={s[key]}: no such file")
        return {"cert": str(Path(s["STACK_TLS_CERT"]).resolve()), "key": str(Path(s["STACK_TLS_KEY"]).resolve()),
                "ca": str(Path(s["STACK_TLS_CA"]).resolve()) if s.get("STACK_TLS_CA") else ""}
    if (d / "tls" / "ca.pem").exists():
        cert, key = issue(d, s["STACK_HOST"])
        return {"cert": str(cert), "key": str(key), "ca": str(d / "tls" / "ca.pem")}
    sys.exit(f"STACK_HOST={s['STACK_HOST']} is reachable from other hosts: the stack starts there only with TLS. "
             "Set STACK_TLS_CERT and STACK_TLS_KEY (the hospital's certificate and key, PEM), or for a trial make "
             f"a local CA first: STACK_DIR={d} python docker/stack.py ca")


def nginx_conf(s: dict, d: Path, tls: dict) -> str:
    """One TLS server per public port, each forwarding to the same port on 127.0.0.1."""
    servers = "".join(f"""
    server {{
        listen {s['STACK_HOST']}:{s[port]} ssl;
        ssl_certificate {tls['cert']};
        ssl_certificate_key {tls['key']};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://127.0.0.1:{s[port]};
            proxy_set_header Host $http_host;  # S3 signatures cover the Host the client used
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header Upgrade $http_upgrade;  # Prefect's events websocket
            proxy_set_header Connection $connection_upgrade;
        }}
    }}""" for port in PUBLIC if s.get(port))
    tmp = d / "nginx" / "tmp"
    return f"""daemon off;
pid {d / 'nginx' / 'nginx.pid'};
error_log {d / 'log' / 'nginx-error.log'} warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    client_max_body_size 0;
    proxy_http_version 1.1;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_read_timeout 3600s;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
{servers}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if not found:
        sys.exit("the stack's TLS front needs Debian's nginx: apt-get install -y nginx-light (or make test-deps)")
    return found


def nginx_command(s: dict, d: Path, tls: dict) -> list[str]:
    """Write the front's configuration (checked with `nginx -t`) and return the command that serves it."""
    (d / "nginx" / "tmp").mkdir(parents=True, exist_ok=True)
    (d / "log").mkdir(exist_ok=True)
    conf = d / "nginx" / "nginx.conf"
    conf.write_text(nginx_conf(s, d, tls))
    cmd = [nginx_binary(), "-c", str(conf), "-p", str(d / "nginx")]
    check = subprocess.run([*cmd, "-t", "-q"], capture_output=True, text=True)
    if check.returncode != 0:
        sys.exit(f"nginx refused {conf}: {check.stderr.strip()}")
    return cmd


def client_tls(tls: dict | None) -> dict[str, str]:
    """What clients need to verify the front: every library's CA setting, pointed at one file."""
    if not tls or not tls["ca"]:
        return {}
    return {name: tls["ca"] for name in ("MLFLOW_TRACKING_SERVER_CERT_PATH", "PREFECT_API_SSL_CERT_FILE",
                                         "AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE")}
