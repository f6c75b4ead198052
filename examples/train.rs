//! Train a sign model on any GPU (or the CPU) from a clip pack or feature pack, and print the
//! metrics of every epoch.
//!
//! cargo run --release --example train -- PACK [DEVICE] [EPOCHS]
//!     e.g. PACK = ../shared/data/traduttore/clips.safetensors, DEVICE = auto | cpu | vulkan ...

use std::sync::Arc;

use signflow::data::{split, Dataset, Source, SplitSpec};
use signflow::model::ModelConfig;
use signflow::train::{initial_model, Trainer, TrainingConfig};
use signflow::{with_backend, AnyBackend};

fn main() -> signflow::Result<()> {
    let mut args = std::env::args().skip(1);
    let Some(pack) = args.next() else {
        eprintln!("usage: train PACK [DEVICE] [EPOCHS]");
        std::process::exit(2);
    };
    let config = TrainingConfig {
        device: args.next().unwrap_or_else(|| "auto".into()),
        num_epochs: args.next().and_then(|e| e.parse().ok()).unwrap_or(5),
        ..TrainingConfig::default()
    };
    let device = AnyBackend::open(&config.gpu_config())?;
    println!("device: {} ({})", device.info().name, device.info().backend);

    let data = Arc::new(Dataset::load(&pack)?);
    let held_out = split(&data, &SplitSpec::Random { fraction: 0.2 }, config.seed)?;
    println!("{}", held_out.note);
    let classes = data.classes().to_vec();
    let train = Source::new(data.clone(), held_out.train)?;
    let val = Source::new(data, held_out.val)?;

    with_backend!(&device, b => {
        let (model, _) = initial_model(b, &ModelConfig::default(), &classes, None, config.seed)?;
        let mut trainer = Trainer::new(b, model, config, classes)?;
        for e in trainer.fit(train, Some(val))? {
            println!(
                "epoch {:>2}: train loss {:.4}  val loss {:.4}  top-1 {:.2}%  top-5 {:.2}%  {:.0} clips/s  peak {:.0} MiB",
                e.epoch,
                e.train_loss,
                e.val_loss.unwrap_or(f64::NAN),
                100.0 * e.val_top1.unwrap_or(f64::NAN),
                100.0 * e.val_top5.unwrap_or(f64::NAN),
                e.samples_per_s,
                e.peak_mb
            );
        }
    });
    Ok(())
}
