//! What the development and benchmark binaries share: the variables they read of their
//! own (beside the services' settings, which they pass on to the processes they start).

use borough_config_client::Var;

/// `borough-dev run`'s data directory: the cluster, the PKI, the generated secrets.
pub const DEV_DATA: Var = Var::new(
    "BOROUGH_DEV_DATA",
    ".data",
    "make run: where the local PostgreSQL cluster, the development PKI and the generated \
     secrets live (make clean-data removes it)",
);
pub const DEV_PG_PORT: Var = Var::new(
    "BOROUGH_DEV_PG_PORT",
    "55432",
    "make run: the local PostgreSQL's port",
);
pub const DEV_PORT_OFFSET: Var = Var::new(
    "BOROUGH_DEV_PORT_OFFSET",
    "0",
    "make run: added to every port of the stack (a second stack beside the first: make fuzz)",
);
pub const HELLO_QUERY_URL: Var = Var::new(
    "BOROUGH_HELLO_QUERY_URL",
    "",
    "borough-hello (a benchmark baseline): also serve GET /api/v1/users/{id} by calling \
     GetUserInfo there, bare",
);
pub const HELLO_GRPC_ADDR: Var = Var::new(
    "BOROUGH_HELLO_GRPC_ADDR",
    "",
    "borough-hello: also serve a bare gRPC QueryService answering GetUserInfo at this address",
);

/// Printed by `make run` for the README's curl commands; read by no program.
pub const DEMO_API_KEY: Var = Var::new(
    "BOROUGH_API_KEY",
    "",
    "make run prints `export BOROUGH_API_KEY=…`: the demo tenant's API key, for the README's \
     curl commands (a shell variable; no program reads it)",
);

/// `make upgrade` (`scripts/upgrade-gateway.sh`, which reads them itself).
pub const UPGRADE_TIMEOUT: Var = Var::new(
    "BOROUGH_UPGRADE_TIMEOUT",
    "30",
    "make upgrade: seconds the new gateway has to answer /readyz 200 before the upgrade \
     rolls back",
);
pub const UPGRADE_LOG: Var = Var::new(
    "BOROUGH_UPGRADE_LOG",
    "gateway.log",
    "make upgrade: the file the new gateway's output is appended to",
);
pub const UPGRADE_SET_SYSCTL: Var = Var::new(
    "BOROUGH_UPGRADE_SET_SYSCTL",
    "true",
    "make upgrade: set net.ipv4.tcp_migrate_req so the old listener's queued connections \
     move to the new one (needs root; false: leave it)",
);

/// Every variable of the tools.
pub const VARS: &[&Var] = &[
    &DEV_DATA,
    &DEV_PG_PORT,
    &DEV_PORT_OFFSET,
    &HELLO_QUERY_URL,
    &HELLO_GRPC_ADDR,
    &DEMO_API_KEY,
    &UPGRADE_TIMEOUT,
    &UPGRADE_LOG,
    &UPGRADE_SET_SYSCTL,
];
