//! `borough-gateway`: reads `BOROUGH_*` settings, binds, serves until SIGTERM/SIGINT.

use anyhow::Context;
use borough_config_client::Env;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    borough_telemetry::init_logging(borough_gateway::SERVICE);
    let settings = borough_gateway::Settings::from_env(&Env::process())?;
    let listeners = borough_gateway::Listeners {
        http: tokio::net::TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("binding BOROUGH_HTTP_ADDR={}", settings.http_addr))?,
        admin: tokio::net::TcpListener::bind(settings.admin_addr)
            .await
            .with_context(|| format!("binding BOROUGH_ADMIN_ADDR={}", settings.admin_addr))?,
    };
    borough_gateway::serve(
        settings,
        listeners,
        borough_telemetry::lifecycle::shutdown_signal(),
    )
    .await?;
    Ok(())
}
