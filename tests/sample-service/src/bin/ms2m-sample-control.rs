//! Drives the MS2M broker-side steps by hand (what the shim automates).

use anyhow::Context;
use clap::{Parser, Subcommand};
use ms2m_sample_service::{amqp, control, message::ControlMessage};

#[derive(Parser, Debug)]
#[command(version, about = "MS2M control-protocol tool")]
struct Args {
    #[arg(long, env = "MS2M_AMQP_URL")]
    amqp_url: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Declare `<queue>.ms2m-replay` and bind it to the exchange; prints its name.
    PrepareReplay {
        #[arg(long, default_value = "ms2m-sample")]
        exchange: String,
        #[arg(long, default_value = "ms2m-sample")]
        queue: String,
    },
    /// Send START_REPLAY to `ms2m.control.<pod>`.
    StartReplay {
        #[arg(long)]
        pod: String,
        #[arg(long)]
        replay_queue: String,
    },
    /// Send END_REPLAY to `ms2m.control.<pod>`.
    EndReplay {
        #[arg(long)]
        pod: String,
    },
    /// Print the number of ready messages in a queue.
    Depth {
        #[arg(long)]
        queue: String,
    },
    DeleteQueue {
        #[arg(long)]
        queue: String,
    },
    DeleteExchange {
        #[arg(long)]
        exchange: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let conn = amqp::connect(&args.amqp_url, "ms2m-sample-control")
        .await
        .context("connect")?;
    let ch = conn.open_channel(None).await?;
    match args.cmd {
        Cmd::PrepareReplay { exchange, queue } => {
            println!("{}", control::prepare_replay(&ch, &exchange, &queue).await?)
        }
        Cmd::StartReplay { pod, replay_queue } => {
            control::send(
                &ch,
                &pod,
                &ControlMessage::StartReplay {
                    queue: replay_queue,
                },
            )
            .await?
        }
        Cmd::EndReplay { pod } => control::send(&ch, &pod, &ControlMessage::EndReplay).await?,
        Cmd::Depth { queue } => println!("{}", amqp::queue_depth(&ch, &queue).await?),
        Cmd::DeleteQueue { queue } => control::delete_queue(&ch, &queue).await?,
        Cmd::DeleteExchange { exchange } => control::delete_exchange(&ch, &exchange).await?,
    }
    let _ = ch.close().await;
    let _ = conn.close().await;
    Ok(())
}
