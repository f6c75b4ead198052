//! `signflow data import | subset | synth`: building clip packs.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use signflow::data::{import_mp_data, try_synth_clips, ImportOptions};
use signflow::fsio::guard::check_writes;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Import a MediaPipe tutorial folder (MP_Data/<class>/<sequence>/<frame>.npy) as a clip pack.
    Import(ImportArgs),
    /// Write some classes and groups of a clip pack, a seeded draw of clips from each, as a new
    /// pack (how the demo's sample of real signing is made).
    Subset(super::subset::SubsetArgs),
    /// Write a generated clip pack of the real shape (for benchmarks and tests only: not real
    /// signing).
    Synth(SynthArgs),
}

#[derive(Args)]
pub struct ImportArgs {
    /// The MP_Data folder.
    pub dir: PathBuf,
    /// The clip pack to write (safetensors).
    #[arg(short, long)]
    pub output: PathBuf,
    /// The group (signer) of the imported clips; default: the folder's name.
    #[arg(long)]
    pub group: Option<String>,
    /// Only these classes, in this order (comma-separated); default: every class folder, sorted.
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// Drop a clip with a broken or non-finite file or misnamed frames, and a class left without
    /// clips (saying which, and how many), instead of failing.
    #[arg(long)]
    pub skip_broken: bool,
}

#[derive(Args)]
pub struct SynthArgs {
    /// Number of classes.
    #[arg(long, default_value_t = 8)]
    pub classes: usize,
    /// Clips per class.
    #[arg(long, default_value_t = 40)]
    pub clips: usize,
    /// Length of the longest clip, in frames.
    #[arg(long, default_value_t = 30)]
    pub frames: usize,
    /// Seed of the generator: the same seed writes the same pack.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The clip pack to write.
    #[arg(short, long)]
    pub output: PathBuf,
}

pub fn run(cmd: DataCommand) -> signflow::Result<()> {
    match cmd {
        DataCommand::Import(a) => {
            check_writes(&[("DIR", &a.dir)], &[("--output", &a.output)])?;
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("importing {pos}/{len} sequences {bar:30} {eta}")
                    .expect("valid template"),
            );
            let opts = ImportOptions {
                classes: a.classes,
                group: a.group,
                skip_broken: a.skip_broken,
            };
            let (pack, report) = import_mp_data(&a.dir, &opts, &bar)?;
            bar.finish_and_clear();
            pack.save(&a.output)?;
            eprintln!(
                "imported {} clips of {} classes ({}) into {}",
                report.clips,
                pack.classes.len(),
                super::printable(&pack.classes.join(", ")),
                a.output.display()
            );
            for (path, why) in &report.skipped {
                eprintln!("warning: dropped the clip of {}: {why}", path.display());
            }
            for (path, why) in &report.dropped_classes {
                eprintln!("warning: {}: {why}", path.display());
            }
            if !report.skipped.is_empty() || !report.dropped_classes.is_empty() {
                eprintln!(
                    "skipped {} broken clips and {} classes without clips",
                    report.skipped.len(),
                    report.dropped_classes.len()
                );
            }
            Ok(())
        }
        DataCommand::Subset(a) => super::subset::run(a),
        DataCommand::Synth(a) => {
            if a.classes == 0 || a.clips == 0 || a.frames < 2 {
                return Err(signflow::Error::InvalidConfig {
                    field: "synth",
                    value: format!(
                        "--classes {} --clips {} --frames {}",
                        a.classes, a.clips, a.frames
                    ),
                    allowed: "at least 1 class, 1 clip per class and 2 frames",
                });
            }
            let pack = try_synth_clips(a.classes, a.clips, a.frames, a.seed)?;
            pack.save(&a.output)?;
            eprintln!(
                "wrote {} GENERATED clips ({} classes; not real signing, for benchmarks and tests) to {}",
                pack.len(),
                a.classes,
                a.output.display()
            );
            Ok(())
        }
    }
}
