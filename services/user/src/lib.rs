//! The user service: tenants' users (the write side) and the tenant directory, over gRPC.
//!
//! [`serve`] runs it on listeners it is given (tests pass 127.0.0.1:0), until `shutdown`
//! resolves; `main.rs` only reads settings, binds and calls it.

pub mod moves;
mod stored;
pub mod tenants;
pub mod users;
pub mod validate;

use std::future::Future;

use borough_config_client::{Env, ServerSettings, SettingsError, Var};
use borough_proto::user::v1::tenant_admin_service_server::TenantAdminServiceServer;
use borough_proto::user::v1::user_service_server::UserServiceServer;
use borough_telemetry::Metrics;
use borough_tenancy::provision::Provisioner;
use borough_tenancy::settings::DatabaseSettings;

pub use borough_net::{Listeners, ServeError};

pub const SERVICE: &str = "user";

/// The service's settings ([`Settings::vars`]: every variable it reads).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listeners (127.0.0.1:50051, admin 127.0.0.1:9461) and shutdown.
    pub server: ServerSettings,
    /// The database and the pools' limits.
    pub database: DatabaseSettings,
    /// [`Settings::PROVISIONER_DATABASE_URL`].
    pub provisioner_url: Option<borough_config_client::SecretUrl>,
    /// [`Settings::IDEMPOTENCY_TTL`].
    pub idempotency_ttl: std::time::Duration,
    /// Mutual TLS with the other services.
    pub tls: borough_tls::TlsSettings,
    /// [`Settings::SECRET_KEYS`].
    pub secret_keys: Option<std::sync::Arc<borough_tenancy::secrets::Keyring>>,
    /// Live tenant moves.
    pub moves: moves::MoveSettings,
}

/// [`Settings::SECRET_KEYS`], if set. The error never shows the value.
pub fn secret_keys(
    env: &Env,
) -> Result<Option<std::sync::Arc<borough_tenancy::secrets::Keyring>>, SettingsError> {
    env.secret(&Settings::SECRET_KEYS)?
        .map(|spec| {
            borough_tenancy::secrets::Keyring::parse(&spec)
                .map(std::sync::Arc::new)
                .map_err(|e| SettingsError::Invalid {
                    name: Settings::SECRET_KEYS.name.to_owned(),
                    value: "<redacted>".to_owned(),
                    reason: e.to_string(),
                })
        })
        .transpose()
}

/// Who may call the user service: the gateway (users, for tenants; the tenant
/// directory and admin), and every Borough process its health.
pub static POLICY: borough_net::authz::Policy = borough_net::authz::Policy {
    rules: &[borough_net::authz::Rule {
        callers: &["gateway"],
        methods: &[
            "/borough.user.v1.UserService/",
            "/borough.user.v1.TenantAdminService/",
        ],
    }],
};

impl Settings {
    pub const PROVISIONER_DATABASE_URL: Var = Var::new(
        "BOROUGH_PROVISIONER_DATABASE_URL",
        "",
        "An owner role on the default server, which creates and migrates schema and database \
         tenants. Unset: only shared tenants and databases given by URL can be created",
    )
    .secret();
    pub const IDEMPOTENCY_TTL: Var = Var::new(
        "BOROUGH_IDEMPOTENCY_TTL",
        "24h",
        "How long an Idempotency-Key is remembered (a repeat within it gets the first reply)",
    );
    pub const MIGRATION_DATABASE_URL: Var = Var::new(
        "BOROUGH_MIGRATION_DATABASE_URL",
        "BOROUGH_DATABASE_URL",
        "borough-user migrate and rekey: the database's owner, which applies migrations",
    )
    .secret();
    pub const SECRET_KEYS: Var = Var::new(
        "BOROUGH_SECRET_KEYS",
        "",
        "<id>:<base64 of 32 bytes>[,...], the first seals: the keys tenants' database URLs \
         are sealed with at rest. Unset: tenants in databases given by URL can be neither \
         created nor reached",
    )
    .secret();

    /// Every variable the service reads, for `docs/settings.md`.
    pub fn vars() -> Vec<&'static Var> {
        [
            &ServerSettings::GRPC_ADDR,
            &Self::PROVISIONER_DATABASE_URL,
            &Self::IDEMPOTENCY_TTL,
            &Self::SECRET_KEYS,
            &Self::MIGRATION_DATABASE_URL,
            &borough_tenancy::migrate::Login::USER_PASSWORD,
            &borough_tenancy::migrate::Login::QUERY_PASSWORD,
            &borough_tenancy::migrate::Login::CONFIG_PASSWORD,
        ]
        .into_iter()
        .chain(ServerSettings::vars())
        .chain(DatabaseSettings::vars())
        .chain(borough_tls::TlsSettings::VARS.iter().copied())
        .chain(moves::MoveSettings::VARS.iter().copied())
        .chain(borough_telemetry::vars())
        .collect()
    }

    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let secret_keys = secret_keys(env)?;
        let mut database = DatabaseSettings::from_env(env)?;
        // The write side opens the operator's URLs of tenant databases elsewhere.
        database.router.credentials =
            borough_tenancy::placement::Credentials::TenantUrls(secret_keys.clone());
        Ok(Settings {
            server: ServerSettings::from_env(
                env,
                SERVICE,
                &ServerSettings::GRPC_ADDR,
                "127.0.0.1:50051",
                "127.0.0.1:9461",
            )?,
            database,
            provisioner_url: match env.secret(&Self::PROVISIONER_DATABASE_URL)? {
                Some(_) => Some(
                    env.secret_url(&Self::PROVISIONER_DATABASE_URL, &["postgres", "postgresql"])?,
                ),
                None => None,
            },
            idempotency_ttl: env.duration(&Self::IDEMPOTENCY_TTL)?,
            tls: borough_tls::TlsSettings::from_env(env, SERVICE)?,
            secret_keys,
            moves: moves::MoveSettings::from_env(env)?,
        })
    }
}

/// Serves until `shutdown` resolves, then fails readiness, waits the grace period, drains
/// in-flight calls and returns.
pub async fn serve(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let metrics = Metrics::new(SERVICE);
    let tls = borough_net::tls_materials(SERVICE, &settings.tls, &metrics)?;
    let router = settings
        .database
        .router(&metrics)
        .map_err(|e| ServeError::DatabaseUrl(e.into()))?;
    let provisioner = Provisioner::new(settings.provisioner_url.as_ref().map(|u| u.expose()))
        .map_err(|e| ServeError::DatabaseUrl(e.into()))?;
    let pool = router.shared_pool().clone();
    let moves = moves::Moves::new(
        router.clone(),
        provisioner.clone(),
        settings.secret_keys.clone(),
        settings.moves.clone(),
        &metrics,
    );
    let routes = tonic::service::Routes::new(UserServiceServer::new(users::Users::new(
        router.clone(),
        settings.idempotency_ttl,
    )))
    .add_service(TenantAdminServiceServer::new(tenants::Tenants::new(
        router,
        provisioner,
        settings.secret_keys.clone(),
        moves.clone(),
        &metrics,
    )));
    // Moves are driven for as long as the service serves, and stop with it (a move cut
    // short is taken up by the next driver: crates' docs, `moves`).
    let serving = borough_net::serve_grpc(
        SERVICE,
        &settings.server,
        tls,
        &POLICY,
        listeners,
        routes,
        std::sync::Arc::new(borough_tenancy::db::Database(pool)),
        metrics,
        shutdown,
    );
    tokio::select! {
        served = serving => served,
        () = moves.run() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_for_make_run() {
        let settings = Settings::from_env(&Env::from_pairs([("", "")])).expect("defaults parse");
        assert_eq!(settings.server.api_addr.port(), 50051);
        assert_eq!(settings.server.admin_addr.port(), 9461);
    }

    #[test]
    fn settings_debug_never_shows_a_database_password() {
        let env = Env::from_pairs([
            (
                "BOROUGH_DATABASE_URL",
                "postgres://svc:s3cr3t-one@db/borough",
            ),
            (
                "BOROUGH_PROVISIONER_DATABASE_URL",
                "postgres://owner:s3cr3t-two@db/borough",
            ),
        ]);
        let debug = format!("{:?}", Settings::from_env(&env).expect("valid"));
        assert!(!debug.contains("s3cr3t"), "{debug}");
    }

    #[test]
    fn a_bad_database_url_fails_naming_the_variable() {
        let env = Env::from_pairs([("BOROUGH_DATABASE_URL", "localhost:5432")]);
        let err = Settings::from_env(&env).expect_err("not a URL");
        assert!(err.to_string().contains("BOROUGH_DATABASE_URL"), "{err}");
    }
}
