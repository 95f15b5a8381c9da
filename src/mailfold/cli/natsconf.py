"""deploy/nats/*.conf, written from the one table of NATS users (`mailfold nats-config`).

The embedded servers of `mailfold dev` and the tests write the same `accounts` block
(mailfold.runtime.nats_users.accounts_block), so dev, tests and production run with the same
users and permissions; a test checks the files in deploy/nats/ are what this writes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

from mailfold.runtime import nats_users

CLUSTER_NAME: Final = "mailfold"
CLUSTER_SIZE: Final = 3
TLS_DIR: Final = "/etc/mailfold/tls"
STORE_DIR: Final = "/var/lib/mailfold/nats"


def _header(title: list[str]) -> list[str]:
    return [
        *(f"# {line}" for line in title),
        "#",
        "# Written by `mailfold nats-config deploy/nats` from mailfold.runtime.nats_users: change",
        "# users and permissions there, then write the files again (a test checks they are current).",
        "# Each service may publish only its own events (mail.events.<org>.<event_type>), its own",
        "# buckets, jobs and dead letters, plus what a JetStream client needs. Passwords come from",
        "# the environment, and nats-server refuses to start when one of them is unset:",
        *(f"#   {user.password_variable}" for user in nats_users.USERS),
        "",
    ]


def _tls(indent: str) -> list[str]:
    # verify: the peer (a client, another node) must present a certificate signed by the CA.
    return [
        f"{indent}tls {{",
        f"{indent}  cert_file: {json.dumps(f'{TLS_DIR}/server.pem')}",
        f"{indent}  key_file: {json.dumps(f'{TLS_DIR}/server-key.pem')}",
        f"{indent}  ca_file: {json.dumps(f'{TLS_DIR}/ca.pem')}",
        f"{indent}  verify: true",
        f"{indent}  timeout: 2",
        f"{indent}}}",
    ]


def _accounts() -> list[str]:
    return nats_users.accounts_block(lambda user: f"${user.password_variable}")


def single_config() -> str:
    """deploy/nats/nats-single.conf: one node."""
    lines = [
        *_header(["mailfold: one NATS node with JetStream and one user per service."]),
        "server_name: mailfold-1",
        "listen: 0.0.0.0:4222",
        "http: 0.0.0.0:8222",
        "max_payload: 8MB",
        "",
        "jetstream {",
        f"  store_dir: {json.dumps(STORE_DIR)}",
        "}",
        "",
        *_accounts(),
        "",
    ]
    return "\n".join(lines)


def cluster_node_config(node: int) -> str:
    """deploy/nats/cluster/node-<node>.conf: one node of the three-node cluster, TLS for
    clients and routes."""
    route_ports = [6222 + n for n in range(CLUSTER_SIZE)]
    lines = [
        *_header(
            [
                f'mailfold: node {node} of the {CLUSTER_SIZE}-node JetStream cluster "{CLUSTER_NAME}", '
                "all on 127.0.0.1,",
                f"clients and routes over TLS with certificates in {TLS_DIR} (deploy/README.md).",
            ]
        ),
        f"server_name: mailfold-n{node}",
        f"listen: 127.0.0.1:{4221 + node}",
        f"http: 127.0.0.1:{8221 + node}",
        "max_payload: 8MB",
        "",
        "jetstream {",
        f"  store_dir: {json.dumps(f'{STORE_DIR}/node-{node}')}",
        "}",
        "",
        "# Clients: TLS only, with a client certificate signed by the CA, then a user's password.",
        *_tls(""),
        "",
        "cluster {",
        f"  name: {CLUSTER_NAME}",
        f"  listen: 127.0.0.1:{route_ports[node - 1]}",
        "  # Routes: mutual TLS, each node's certificate signed by the same CA.",
        *_tls("  "),
        "  # Every node lists all three; a node recognises and skips the route to itself.",
        "  routes: [",
        *(f"    nats-route://127.0.0.1:{port}" for port in route_ports),
        "  ]",
        "}",
        "",
        *_accounts(),
        "",
    ]
    return "\n".join(lines)


def deploy_configs() -> dict[str, str]:
    """Every file of deploy/nats/, by its path there."""
    configs = {"nats-single.conf": single_config()}
    for node in range(1, CLUSTER_SIZE + 1):
        configs[f"cluster/node-{node}.conf"] = cluster_node_config(node)
    return configs


def write_deploy_configs(folder: Path) -> list[Path]:
    """Write deploy_configs() under `folder`; the paths written."""
    written = []
    for name, text in deploy_configs().items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
