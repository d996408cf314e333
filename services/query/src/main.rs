//! `borough-query`: serves the read side.

use anyhow::Context;
use borough_config_client::Env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    borough_telemetry::init_logging(borough_query::SERVICE);
    let env = Env::process();
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => serve(&env).await,
        Some(other) => anyhow::bail!("unknown command {other:?}; expected `serve`"),
    }
}

async fn serve(env: &Env) -> anyhow::Result<()> {
    let settings = borough_query::Settings::from_env(env)?;
    let listeners = borough_query::Listeners {
        grpc: tokio::net::TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("binding BOROUGH_GRPC_ADDR={}", settings.grpc_addr))?,
        admin: tokio::net::TcpListener::bind(settings.admin_addr)
            .await
            .with_context(|| format!("binding BOROUGH_ADMIN_ADDR={}", settings.admin_addr))?,
    };
    borough_query::serve(
        settings,
        listeners,
        borough_telemetry::lifecycle::shutdown_signal(),
    )
    .await?;
    Ok(())
}
