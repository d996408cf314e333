//! `borough-gateway`: reads `BOROUGH_*` settings, binds, serves until SIGTERM/SIGINT.

use borough_config_client::Env;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    borough_telemetry::init_logging(borough_gateway::SERVICE);
    let settings = borough_gateway::Settings::from_env(&Env::process())?;
    let listeners = borough_gateway::Listeners::bind(&settings.server).await?;
    let served = borough_gateway::serve(
        settings,
        listeners,
        borough_telemetry::lifecycle::shutdown_signal(),
    )
    .await;
    borough_telemetry::otel::flush().await;
    Ok(served?)
}
