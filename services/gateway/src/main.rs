//! `borough-gateway`: reads `BOROUGH_*` settings, binds, serves until SIGTERM/SIGINT.

use borough_config_client::Env;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    borough_telemetry::init_logging(borough_gateway::SERVICE);
    let served = serve().await;
    // Spans and log lines still buffered are sent before the process ends.
    borough_telemetry::otel::flush().await;
    borough_telemetry::logging::flush_logs();
    served
}

async fn serve() -> anyhow::Result<()> {
    let settings = borough_gateway::Settings::from_env(&Env::process())?;
    let listeners = borough_gateway::Listeners::bind(&settings.server).await?;
    borough_gateway::serve(
        settings,
        listeners,
        borough_telemetry::lifecycle::shutdown_signal(),
    )
    .await?;
    Ok(())
}
