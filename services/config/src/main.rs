//! `borough-query`: the configuration center.

use borough_config_client::Env;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    borough_telemetry::init_logging(borough_config::SERVICE);
    let env = Env::process();
    let result = match std::env::args().nth(1).as_deref() {
        None | Some("serve") => serve(&env).await,
        Some(other) => anyhow::bail!("unknown command {other:?}; expected `serve`"),
    };
    // Spans and log lines still buffered are sent before the process ends.
    borough_telemetry::otel::flush().await;
    borough_telemetry::logging::flush_logs();
    result
}

async fn serve(env: &Env) -> anyhow::Result<()> {
    let settings = borough_config::Settings::from_env(env)?;
    let listeners = borough_config::Listeners::bind(&settings.server).await?;
    borough_config::serve(
        settings,
        listeners,
        borough_telemetry::lifecycle::shutdown_signal(),
    )
    .await?;
    Ok(())
}
