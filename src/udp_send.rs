//! `detflow udp-send`: the simulated detector's frames as UDP datagrams, the stream `acquire
//! --backend udp` receives.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use detflow_engine::config::{self, FrameSize, Seconds};
use detflow_hal::PixelType;

#[derive(Debug, Args)]
pub(crate) struct UdpSendArgs {
    /// Receiver address, IP:PORT.
    #[arg(long, value_name = "ADDR")]
    to: std::net::SocketAddr,
    /// Frames to send; 0 until Ctrl-C.
    #[arg(long, value_name = "N", default_value_t = 100)]
    frames: u64,
    /// Frame size.
    #[arg(long, value_name = "WxH", default_value = "1024x1024")]
    size: FrameSize,
    /// Pixel type: u8 u16 u32 i8 i16 i32 f32 f64.
    #[arg(long, value_name = "TYPE", default_value = "u16", value_parser = config::parse::<PixelType>)]
    dtype: PixelType,
    /// Simulated image: peaks, ramp, sine, noise.
    #[arg(long, value_name = "MODE", default_value = "peaks")]
    mode: detflow_sim::SimMode,
    /// Seed of the simulation.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Exposure time in seconds.
    #[arg(
        long,
        value_name = "S",
        default_value = "0",
        allow_negative_numbers = true
    )]
    exposure: Seconds,
    /// Frame period in seconds; 0 is as fast as possible.
    #[arg(
        long,
        value_name = "S",
        default_value = "0",
        allow_negative_numbers = true
    )]
    period: Seconds,
    /// Payload bytes per datagram.
    #[arg(long, value_name = "N", default_value_t = detflow_engine::backend::udp::DEFAULT_PAYLOAD)]
    packet_bytes: usize,
    /// Print one JSON object with what was sent instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn udp_send(args: &UdpSendArgs) -> anyhow::Result<ExitCode> {
    let max = detflow_engine::backend::udp::MAX_PAYLOAD;
    if args.packet_bytes == 0 || args.packet_bytes > max {
        let reason = format!("expected 1 to {max}");
        return Err(
            detflow_engine::ConfigError::new("packet-bytes", args.packet_bytes, reason).into(),
        );
    }
    let stream = detflow_engine::backend::udp::SimStream {
        to: args.to,
        frames: args.frames,
        size: args.size.pair(),
        pixel_type: args.dtype,
        mode: args.mode,
        seed: args.seed,
        exposure: args.exposure.duration(),
        period: args.period.duration(),
        packet_bytes: args.packet_bytes,
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let report = detflow_engine::backend::udp::send_sim(&stream, &stop)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "sent {} frames ({} datagrams, {} bytes) to {} in {:.3} s",
            report.frames, report.packets, report.bytes, args.to, report.elapsed_s
        );
    }
    Ok(ExitCode::SUCCESS)
}
