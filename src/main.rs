//! The `signflow` command line.

mod cli;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use signflow::bench::{seed, BenchBudget, BenchRow, Timer};
use signflow::selftest::{Inputs, ParityRow};
use signflow::{with_backend, Adapters, AnyBackend, DeviceInfo, GpuConfig};

#[derive(Parser)]
#[command(
    name = "signflow",
    version,
    about = "Sign-language recognition transformers on any GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the CPU backend and every GPU adapter, and which one `auto` takes.
    Devices {
        #[arg(long, help = cli::JSON_HELP)]
        json: bool,
    },
    /// Check every op on a device against the f64 reference, on fresh random inputs.
    Selftest {
        #[command(flatten)]
        device: DeviceArgs,
        /// Seed of the random inputs; default: a fresh one, printed.
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, help = cli::JSON_HELP)]
        json: bool,
    },
    /// Time the ops on a device: median ms, GFLOP/s or GB/s.
    Bench {
        #[command(flatten)]
        device: DeviceArgs,
        /// Samples per case (the median is reported).
        #[arg(long, default_value_t = 9, value_parser = cli::positive)]
        samples: usize,
        /// Only the cases whose name contains this, or one of its comma-separated parts (e.g.
        /// `matmul`, `2048x`, `copy,gelu`, `seed` for the replaced system's benchmarks).
        #[arg(long)]
        filter: Option<String>,
        /// Also time each kernel by the GPU's clock, and print where each case's time goes.
        #[arg(long)]
        kernel_times: bool,
        /// Rows of 1024 f32 values in each tensor of the memory-bound cases (copy, layer norm,
        /// GELU, ...).
        #[arg(long, default_value_t = signflow::bench::MEMORY_ROWS as u64,
              value_parser = clap::value_parser!(u64).range(1..))]
        memory_rows: u64,
        #[arg(long, help = cli::JSON_HELP)]
        json: bool,
    },
    /// A one-command tour: device, self-test, a short training run on a sample of real signing,
    /// evaluation on a signer it did not train on, and predictions.
    Demo(cli::demo::DemoArgs),
    /// Build clip packs: import an MP_Data folder, take a subset of a pack, or generate one.
    #[command(subcommand)]
    Data(cli::data::DataCommand),
    /// Train a model on a clip pack or a feature pack.
    Train(Box<cli::train::TrainArgs>),
    /// Loss, top-1, top-k and per-class accuracy of a checkpoint on a labelled pack.
    Eval(cli::train::EvalArgs),
    /// Class probabilities for a pack or one MP_Data sequence folder; with --stream, the
    /// timeline of the signs in a long recording.
    Predict(cli::predict::PredictArgs),
    /// Write a model as a standard ONNX file (opset 17 or later) for ONNX runtimes.
    Export(cli::export::ExportArgs),
    /// Time and memory of one prediction or training step of a model on a device.
    Profile(cli::profile::ProfileArgs),
}

#[derive(Args)]
struct DeviceArgs {
    #[arg(long, default_value = "auto", help = cli::DEVICE_HELP)]
    device: String,
    /// Share of the device's memory the buffer pool may hold, in (0, 1].
    #[arg(long, default_value_t = 0.9)]
    memory_fraction: f64,
    /// Absolute memory budget in MiB (overrides --memory-fraction).
    #[arg(long)]
    memory_limit_mb: Option<u64>,
}

impl DeviceArgs {
    fn open(&self) -> signflow::Result<AnyBackend> {
        let config = cli::with_coop_matrix(GpuConfig {
            device: self.device.clone(),
            memory_fraction: self.memory_fraction,
            memory_limit_mb: self.memory_limit_mb,
            ..GpuConfig::default()
        });
        let device = AnyBackend::open(&config)?;
        tracing::info!("device: {} ({})", device.info().name, device.info().backend);
        Ok(device)
    }
}

fn main() -> ExitCode {
    signflow::device::quiet_display_probes();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,signflow=info".into()),
        )
        .init();
    let matches = command().get_matches();
    if let Some((_, sub)) = matches.subcommand() {
        if let Ok(Some(&coop)) = sub.try_get_one::<signflow::CoopMatrix>("coop_matrix") {
            cli::set_coop_matrix(coop);
        }
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Messages quote names from files: escaped, they cannot drive the terminal.
            let text = e.to_string();
            let lines: Vec<String> = text.lines().map(cli::printable).collect();
            eprintln!("error: {}", lines.join("\n"));
            ExitCode::FAILURE
        }
    }
}

/// The command line as `main` parses it: clap's tree from [`Cli`], `--coop-matrix` beside
/// every `--device` (one flag, read once, [`cli::with_coop_matrix`]), and the defaults of
/// `train`'s flags written into their help lines (clap cannot show them itself, see
/// [`cli::train::flag_defaults`]).
fn command() -> clap::Command {
    let command = cli::DEVICE_COMMANDS
        .into_iter()
        .fold(Cli::command(), |command, name| {
            command.mut_subcommand(name, |sub| sub.arg(cli::coop_matrix_arg()))
        });
    command.mut_subcommand("train", |train| {
        cli::train::flag_defaults()
            .into_iter()
            .fold(train, |train, (id, default)| {
                train.mut_arg(id, |arg| {
                    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                    arg.help(format!("{help} [default: {default}]"))
                })
            })
    })
}

fn run(cli: Cli) -> signflow::Result<ExitCode> {
    match cli.command {
        Command::Devices { json } => {
            let infos = Adapters::discover().device_infos();
            if json {
                print_json(&infos);
            } else {
                print_devices(&infos);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Selftest { device, seed, json } => {
            let device = device.open()?;
            let seed = seed.unwrap_or_else(Inputs::fresh_seed);
            eprintln!("selftest on {} with seed {seed}", device.info().name);
            let bar = spinner(json);
            let rows = with_backend!(&device, b => signflow::selftest::run_all(b, seed, |row| {
                bar.set_message(format!("{} {}", row.op, row.shape));
                bar.inc(1);
            }))?;
            bar.finish_and_clear();
            if json {
                print_json(&rows);
            } else {
                print_selftest(&rows);
            }
            let failed = rows.iter().filter(|r| r.failed()).count();
            let skipped = rows.iter().filter(|r| r.skipped.is_some()).count();
            if failed > 0 {
                eprintln!("{failed} of {} checks failed (seed {seed})", rows.len());
                return Ok(ExitCode::FAILURE);
            }
            let ran = rows.len() - skipped;
            eprintln!("all {ran} checks passed, {skipped} skipped (the backend refused the dtype)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(a) => cli::demo::demo(a).map(|()| ExitCode::SUCCESS),
        Command::Data(c) => cli::data::run(c).map(|()| ExitCode::SUCCESS),
        Command::Train(a) => cli::train::train(*a).map(|()| ExitCode::SUCCESS),
        Command::Eval(a) => cli::train::eval(a).map(|()| ExitCode::SUCCESS),
        Command::Predict(a) => cli::predict::predict(a).map(|()| ExitCode::SUCCESS),
        Command::Export(a) => cli::export::export(a).map(|()| ExitCode::SUCCESS),
        Command::Profile(a) => cli::profile::profile(a).map(|()| ExitCode::SUCCESS),
        Command::Bench {
            device,
            samples,
            filter,
            kernel_times,
            memory_rows,
            json,
        } => {
            if let Some(f) = &filter {
                if f.split(',').any(str::is_empty) {
                    return Err(no_bench_case(f, "an empty part matches every case"));
                }
            }
            let device = device.open()?;
            let budget = BenchBudget {
                samples,
                kernel_times,
                ..BenchBudget::default()
            };
            let bar = spinner(json);
            let rows = with_backend!(&device, b => signflow::bench::run_all(b, &budget, filter.as_deref(), memory_rows as usize, |case| {
                bar.set_message(case.to_string());
                bar.inc(1);
            }))?;
            bar.finish_and_clear();
            if let (Some(f), true) = (&filter, rows.is_empty()) {
                return Err(no_bench_case(f, "it matches no case on this device"));
            }
            if kernel_times && rows.iter().all(|r| r.kernels.is_empty()) {
                eprintln!(
                    "note: --kernel-times: {} has no kernel clock (timestamp queries), so no \
                     kernel was timed",
                    device.info().name
                );
            }
            if json {
                print_json(&rows);
            } else {
                print_bench(&rows);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The refusal of a `bench --filter` that would not select cases by name.
fn no_bench_case(filter: &str, why: &str) -> signflow::Error {
    signflow::Error::InvalidFlags {
        flags: format!("--filter {filter}"),
        reason: format!(
            "{why}; give parts of case names, comma-separated: matmul, attention, train_step, \
             predict, host_record, a memory-bound op (copy, add, scale, cast, gelu_fwd, ...), or \
             seed (the replaced system's benchmarks: seed_1000, 1,000 predictions; seed_50x10k, \
             training projected to 50 epochs of 10,000 clips); `signflow bench` without \
             --filter runs them all"
        ),
    }
}

/// Progress on standard error, hidden when it is not a terminal.
fn spinner(quiet: bool) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed}] {pos} done, now {msg}")
            .expect("valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

fn print_json<T: serde::Serialize>(value: &T) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, value);
    let _ = writeln!(out);
}

fn print_devices(infos: &[DeviceInfo]) {
    for info in infos {
        let id = info.index.map_or("cpu".to_string(), |i| format!("gpu:{i}"));
        let memory = match info.memory_bytes {
            Some(b) if info.memory_shared_with_host => {
                format!("{} MiB (shared with the host)", b >> 20)
            }
            Some(b) => format!("{} MiB", b >> 20),
            None => "unknown".into(),
        };
        println!(
            "{id:<7}{}{}\n       backend {}, {}{}, memory {memory}",
            info.name,
            if info.auto { "   <- auto" } else { "" },
            info.backend,
            info.device_type,
            if info.software { " (software)" } else { "" },
        );
        let precisions: Vec<&str> = info.precisions.iter().map(|d| d.name()).collect();
        let coop: Vec<String> = info
            .cooperative_matrix
            .iter()
            .map(|c| format!("{}x{}x{} {}->{}", c.m, c.n, c.k, c.ab, c.cr))
            .collect();
        println!(
            "       precisions {}, cooperative matrices: {}",
            precisions.join(" "),
            if coop.is_empty() {
                "none".to_string()
            } else {
                coop.join(", ")
            }
        );
        if info.index.is_some() {
            println!("       driver {} {}", info.driver, info.driver_info);
            println!(
                "       subgroups {}..{}, features: {}",
                info.subgroup_min,
                info.subgroup_max,
                info.features.join(" ")
            );
            let limits: Vec<String> = info
                .limits
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            println!("       limits: {}", limits.join(" "));
        } else {
            println!("       {}", info.driver_info);
        }
    }
}

fn print_selftest(rows: &[ParityRow]) {
    println!(
        "{:<14} {:<5} {:<28} {:>12} {:>12} {:>9}  result",
        "op", "dtype", "shape", "max abs err", "max rel err", "tol"
    );
    for r in rows {
        println!(
            "{:<14} {:<5} {:<28} {:>12.3e} {:>12.3e} {:>9.0e}  {}",
            r.op.name(),
            r.dtype.name(),
            r.shape,
            r.max_abs_err,
            r.max_rel_err,
            r.tol,
            match (&r.skipped, r.pass) {
                (Some(reason), _) => format!("skipped: {reason}"),
                (None, true) => "pass".into(),
                (None, false) => "FAIL".into(),
            }
        );
    }
}

/// The kernels that took most of a row's time: per call, and their share of it.
fn print_kernel_times(r: &BenchRow) {
    const SHOWN: usize = 12;
    for k in r.kernels.iter().take(SHOWN) {
        println!(
            "    {:<56} {:>7.1} calls {:>10.4} ms {:>5.1}%",
            k.kernel,
            k.calls,
            k.ms,
            100.0 * k.ms / r.median_ms
        );
    }
    if r.kernels.len() > SHOWN {
        let rest: f64 = r.kernels[SHOWN..].iter().map(|k| k.ms).sum();
        println!(
            "    {:<56} {:>13} {:>10.4} ms {:>5.1}%",
            format!("{} more kernels", r.kernels.len() - SHOWN),
            "",
            rest,
            100.0 * rest / r.median_ms
        );
    }
    if !r.kernels.is_empty() {
        let busy: f64 = r.kernels.iter().map(|k| k.ms).sum();
        println!(
            "    {:<56} {:>13} {:>10.4} ms {:>5.1}%",
            "all kernels (the rest: between passes)",
            "",
            busy,
            100.0 * busy / r.median_ms
        );
    }
}

fn print_bench(rows: &[BenchRow]) {
    if let Some(first) = rows.first() {
        println!("device: {} ({})", first.device, first.backend);
    }
    println!(
        "{:<18} {:<5} {:<18} {:>10} {:>10} {:>10} {:>16} {:>7} {:>9}  timer",
        "op", "dtype", "size", "median ms", "min ms", "max ms", "throughput", "vs copy", "peak MiB"
    );
    for r in rows {
        let size = match (r.m, r.n, r.k, r.bytes) {
            _ if r.case.is_some() => format!(
                "{} b{} t{}",
                r.case.map_or("", |c| c.name()),
                r.batch.unwrap_or(0),
                r.seq.unwrap_or(0)
            ),
            (Some(m), Some(n), Some(k), _) => format!("{m}x{n}x{k}"),
            _ if r.seq.is_some() => format!(
                "b{} t{} h{} d{}",
                r.batch.unwrap_or(0),
                r.seq.unwrap_or(0),
                r.heads.unwrap_or(0),
                r.head_dim.unwrap_or(0)
            ),
            (_, _, _, Some(bytes)) => format!("{} MiB moved", bytes >> 20),
            _ => String::new(),
        };
        let throughput = match (r.gflops, r.gbps) {
            (Some(g), _) => format!("{g:.1} GFLOP/s"),
            (_, Some(g)) => format!("{g:.1} GB/s"),
            _ => String::new(),
        };
        let vs_copy = r.vs_copy.map(|v| format!("{v:.2}x")).unwrap_or_default();
        println!(
            "{:<18} {:<5} {:<18} {:>10.3} {:>10.3} {:>10.3} {:>16} {:>7} {:>9.1}  {}",
            r.op.name(),
            r.dtype.name(),
            size,
            r.median_ms,
            r.min_ms,
            r.max_ms,
            throughput,
            vs_copy,
            r.peak_mb,
            match r.timer {
                Timer::DeviceTimestamps => "gpu timestamps",
                Timer::WallClock => "wall clock",
            }
        );
        print_kernel_times(r);
        print_seed(r);
    }
}

/// The seed rows' own figures (`predictions_1000`, `train_50x10k`), under their row.
fn print_seed(r: &BenchRow) {
    if let (Some(mode), Some(clips), Some(total), Some(p50), Some(p99)) =
        (r.mode, r.clips, r.total_ms, r.p50_ms, r.p99_ms)
    {
        println!(
            "    {clips} clips {}: {total:.1} ms in all; per prediction p50 {p50:.3} ms, \
             p99 {p99:.3} ms",
            match mode {
                seed::PredictionMode::Single => "one at a time".to_string(),
                seed::PredictionMode::Batched => format!("in batches of {}", r.batch.unwrap_or(0)),
            }
        );
    }
    if let (Some(projected), Some(step), Some(run)) = (r.projected_s, r.step_ms, r.run_step_ms) {
        println!(
            "    {} epochs of {} clips at batch {}: {projected:.0} s ({:.1} min) from a \
             {step:.1} ms step; a real training run took {run:.1} ms a step ({:+.0}% from the \
             step)",
            seed::PROJECTED_EPOCHS,
            seed::PROJECTED_CLIPS,
            r.batch.unwrap_or(0),
            projected / 60.0,
            100.0 * (run / step - 1.0)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_well_formed() {
        command().debug_assert();
    }

    /// Each subcommand without an about line and each argument without a help line,
    /// flattened groups and nested subcommands included, named by its path (`path` names
    /// `cmd`).
    fn without_help(cmd: &clap::Command, path: &str) -> Vec<String> {
        let mut missing = Vec::new();
        for arg in cmd.get_arguments() {
            if arg
                .get_help()
                .is_none_or(|h| h.to_string().trim().is_empty())
            {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() {
                missing.push(format!("{path} {} (the command itself)", sub.get_name()));
            }
            missing.extend(without_help(sub, &format!("{path} {}", sub.get_name())));
        }
        missing
    }

    /// `--help` documents every flag of every command.
    #[test]
    fn every_argument_has_a_help_line() {
        let missing = without_help(&command(), "signflow");
        assert!(missing.is_empty(), "without help text: {missing:#?}");
        let bare = clap::Command::new("x").subcommand(
            clap::Command::new("y")
                .about("has an about")
                .arg(clap::Arg::new("quiet").long("quiet")),
        );
        assert_eq!(without_help(&bare, "x"), ["x y quiet"]);
    }

    /// `train`'s options show the configuration's defaults, which clap cannot fill in itself.
    #[test]
    fn train_help_shows_the_configuration_defaults() {
        let help = command()
            .find_subcommand_mut("train")
            .expect("a train command")
            .render_long_help()
            .to_string();
        for shown in [
            "[default: 30]",
            "[default: cosine]",
            "[default: 256]",
            "[default: auto]",
        ] {
            assert!(help.contains(shown), "{shown} missing from:\n{help}");
        }
    }
}
