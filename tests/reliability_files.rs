//! File safety through the command line: no command writes over a file it reads, odd (non-UTF-8)
//! paths never panic, one run per output directory, SIGTERM saves like Ctrl-C, nothing is
//! written before every check passed, and a run resumes from anywhere on the same data only.

mod cli_support;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cli_support::TINY_MODEL;
use signflow::train::state::TrainingState;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_signflow"))
}

fn run_in(dir: Option<&Path>, args: &[&OsStr]) -> Output {
    let mut cmd = bin();
    cmd.args(args);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    cmd.output().expect("the binary runs")
}

/// The command's standard error; it must have exited by itself (0, 1, or 2 for a flag clap
/// refuses), not by a panic or a signal.
fn stderr_of(args: &[&OsStr], out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.code().is_some_and(|c| (0..=2).contains(&c)) && !err.contains("panicked"),
        "signflow {args:?} ended by {:?}:\n{err}",
        out.status
    );
    err
}

fn ok_in(dir: Option<&Path>, args: &[&OsStr]) -> String {
    let out = run_in(dir, args);
    let err = stderr_of(args, &out);
    assert!(out.status.success(), "signflow {args:?} failed:\n{err}");
    err
}

fn fails_in(dir: Option<&Path>, args: &[&OsStr]) -> String {
    let out = run_in(dir, args);
    let err = stderr_of(args, &out);
    assert!(!out.status.success(), "signflow {args:?} should fail");
    err
}

fn ok(args: &[&OsStr]) -> String {
    ok_in(None, args)
}

fn fails(args: &[&OsStr]) -> String {
    fails_in(None, args)
}

/// Arguments as the binary takes them, paths included.
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        &[$(AsRef::<OsStr>::as_ref(&$a)),*][..]
    };
}

fn synth(path: &Path, clips: usize, seed: u64) {
    ok(args![
        "data",
        "synth",
        "--classes",
        "3",
        "--clips",
        clips.to_string(),
        "--frames",
        "12",
        "--seed",
        seed.to_string(),
        "-o",
        path
    ]);
}

/// `train --data data --out out` with a tiny model and the extra flags.
fn train_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["train".into(), "--data".into(), data.into()];
    args.extend(["--out".into(), out.into()]);
    args.extend(
        TINY_MODEL
            .iter()
            .chain(&["--device", "cpu"])
            .chain(extra)
            .map(OsString::from),
    );
    if !extra.contains(&"--batch-size") {
        args.extend(["--batch-size".into(), "8".into()]);
    }
    args
}

fn os_refs(args: &[OsString]) -> Vec<&OsStr> {
    args.iter().map(OsString::as_os_str).collect()
}

/// A pack and a model trained on it for one epoch, in `dir`.
fn pack_and_model(dir: &Path) -> (PathBuf, PathBuf) {
    let pack = dir.join("pack.safetensors");
    synth(&pack, 4, 1);
    let run = dir.join("model-run");
    ok(&os_refs(&train_args(&pack, &run, &["--epochs", "1"])));
    (pack, run.join("final.safetensors"))
}

fn unchanged(path: &Path, before: &[u8]) {
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "{} was changed",
        path.display()
    );
}

#[test]
fn no_command_writes_over_a_file_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pack, model) = pack_and_model(d);
    let (pack_bytes, model_bytes) = (
        std::fs::read(&pack).unwrap(),
        std::fs::read(&model).unwrap(),
    );
    let linked = d.join("model-link.safetensors");
    std::fs::hard_link(&model, &linked).unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(&pack, d.join("pack-link.safetensors")).unwrap();
    let mut aliases = vec![
        model.clone(),
        pack.clone(),
        linked,
        d.join("model-run/../pack.safetensors"),
    ];
    if cfg!(unix) {
        aliases.push(d.join("pack-link.safetensors"));
    }
    for output in &aliases {
        let err = fails(args![
            "predict", "--model", model, "--input", pack, "--device", "cpu", "--output", output
        ]);
        assert!(err.contains("--output") && err.contains("reads"), "{err}");
    }
    // export reads only the model: the model by another name, and a hard link to it.
    for output in [
        d.join("model-run/./final.safetensors"),
        d.join("model-link.safetensors"),
    ] {
        let err = fails(args!["export", "--model", model, "-o", output]);
        assert!(err.contains("--output") && err.contains("reads"), "{err}");
    }
    // The same for the packs that data subset and import read.
    for output in [pack.clone(), d.join("./pack.safetensors")] {
        let err = fails(args![
            "data",
            "subset",
            pack,
            "-o",
            output,
            "--classes",
            "sign-00"
        ]);
        assert!(err.contains("reads"), "{err}");
    }
    let mp = d.join("MP_Data");
    std::fs::create_dir_all(mp.join("hello/0")).unwrap();
    let npy = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/data/mp_data_sample/MP_Data/hello/0/0.npy"),
    )
    .unwrap();
    std::fs::write(mp.join("hello/0/0.npy"), &npy).unwrap();
    std::fs::write(mp.join("hello/0/1.npy"), &npy).unwrap();
    let err = fails(args!["data", "import", mp, "-o", mp.join("hello/0/1.npy")]);
    assert!(err.contains("reads"), "{err}");
    unchanged(&mp.join("hello/0/1.npy"), &npy);
    // Training: a run directory whose files are the run's inputs.
    let run = d.join("reuse");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::copy(&model, run.join("final.safetensors")).unwrap();
    let mut init = train_args(&pack, &run, &["--epochs", "1"]);
    init.extend(["--init".into(), run.join("final.safetensors").into()]);
    let err = fails(&os_refs(&init));
    assert!(err.contains("--init") && err.contains("reads"), "{err}");
    unchanged(&run.join("final.safetensors"), &model_bytes);
    std::fs::write(run.join("config.json"), "{\"num_epochs\": 1}").unwrap();
    let mut config = train_args(&pack, &run, &[]);
    config.extend(["--config".into(), run.join("config.json").into()]);
    let err = fails(&os_refs(&config));
    assert!(err.contains("--config"), "{err}");
    assert_eq!(
        std::fs::read_to_string(run.join("config.json")).unwrap(),
        "{\"num_epochs\": 1}"
    );
    unchanged(&model, &model_bytes);
    unchanged(&pack, &pack_bytes);
    // No temporary file is left behind by a refused or failed write.
    let names: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[cfg(unix)]
#[test]
fn paths_that_are_not_utf8_never_panic() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let odd = |name: &[u8]| d.join(OsStr::from_bytes(name));
    let pack = odd(b"caf\xe9.safetensors");
    synth(&pack, 4, 1);
    let out = odd(b"run-\xff");
    ok(&os_refs(&train_args(&pack, &out, &["--epochs", "1"])));
    assert!(out.join("config.json").exists() && out.join("state.safetensors").exists());
    // The paths are recorded as they are: the run resumes with them.
    let mut resume: Vec<OsString> = vec!["train".into(), "--resume".into(), out.clone().into()];
    resume.extend(["--device".into(), "cpu".into()]);
    ok(&os_refs(&resume));
    let model = out.join("final.safetensors");
    ok(args![
        "predict",
        "--model",
        model,
        "--input",
        pack,
        "--device",
        "cpu",
        "--output",
        odd(b"logits-\xfe.safetensors")
    ]);
    ok(args![
        "eval", "--model", model, "--data", pack, "--device", "cpu"
    ]);
    ok(args![
        "data",
        "subset",
        pack,
        "-o",
        odd(b"sub\xe9.safetensors"),
        "--classes",
        "sign-00"
    ]);
    let err = fails(args![
        "predict",
        "--model",
        odd(b"missing\xe9"),
        "--input",
        pack
    ]);
    assert!(err.contains("missing\u{fffd}"), "{err}");
}

/// A command running beside the test, killed if the test ends first.
struct Running(Option<Child>);

impl Running {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("still running")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `path` exists (a running command got that far); fails after two minutes.
fn wait_for(path: &Path, child: &mut Child) {
    let start = Instant::now();
    while !path.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the run ended ({status}) before {} appeared",
                path.display()
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A training run long enough to be caught running: many clips, one per batch, many epochs.
fn long_run(pack: &Path, out: &Path) -> Running {
    let args = train_args(
        pack,
        out,
        &["--epochs", "1000", "--log-every", "1", "--batch-size", "1"],
    );
    Running(Some(
        bin()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    ))
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[cfg(unix)]
#[test]
fn one_run_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pack = d.join("pack.safetensors");
    synth(&pack, 40, 1);
    let out = d.join("run");
    let mut first = long_run(&pack, &out);
    wait_for(&out.join("metrics.jsonl"), first.child());
    let second = train_args(&pack, &out, &["--epochs", "1"]);
    let err = fails(&os_refs(&second));
    let pid = first.child().id().to_string();
    assert!(
        err.contains(&out.display().to_string()) && err.contains(&pid),
        "{err}"
    );
    // A resume of the running run is refused just the same.
    wait_for(&out.join("state.safetensors"), first.child());
    let err = fails(args!["train", "--resume", out, "--device", "cpu"]);
    assert!(err.contains(&pid), "{err}");
    drop(first);

    // The killed run's lock is stale: the next run takes it over, and says so.
    let fresh = d.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::write(fresh.join("run.lock"), format!("{pid}\n")).unwrap();
    let err = ok(&os_refs(&train_args(&pack, &fresh, &["--epochs", "1"])));
    assert!(err.contains("stale") && err.contains(&pid), "{err}");
    assert!(!fresh.join("run.lock").exists(), "the lock is released");
}

#[cfg(unix)]
#[test]
fn sigterm_saves_the_state_like_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pack = d.join("pack.safetensors");
    synth(&pack, 40, 1);
    let out = d.join("run");
    let mut run = long_run(&pack, &out);
    wait_for(&out.join("metrics.jsonl"), run.child());
    // At least one update recorded, then the signal mid-epoch.
    let start = Instant::now();
    while std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .count()
        < 2
    {
        assert!(start.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(run.child(), "TERM");
    let output = run.0.take().unwrap().wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("--resume"),
        "{err}"
    );
    assert!(out.join("state.safetensors").exists());
    assert!(!out.join("run.lock").exists(), "the lock is released");
}

#[test]
fn nothing_is_written_before_every_check_passed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for bad in [
        &["--epochs", "0"][..],
        &["--hold-out", "nobody"][..],
        &["--device", "no-such-device"][..],
    ] {
        let out = d.join("demo");
        let mut args: Vec<&OsStr> = args!["demo", "--skip-selftest", "--out", out].to_vec();
        args.extend(bad.iter().map(OsStr::new));
        if !bad.contains(&"--device") {
            args.extend(args!["--device", "cpu"]);
        }
        fails(&args);
        assert!(!out.exists(), "demo {bad:?} wrote {}", out.display());
    }
    // Nor does the demo replace a file of the user's where its sample goes.
    let out = d.join("mine");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("LICENSE"), "my licence").unwrap();
    let err = fails(args![
        "demo",
        "--skip-selftest",
        "--device",
        "cpu",
        "--out",
        out
    ]);
    assert!(err.contains("LICENSE"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("LICENSE")).unwrap(),
        "my licence"
    );
    assert!(!out.join("run").exists());
    // A run refused after its checks leaves no directory behind.
    let pack = d.join("pack.safetensors");
    synth(&pack, 4, 1);
    let out = d.join("run");
    let err = fails(&os_refs(&train_args(&pack, &out, &["--dropout", "1.5"])));
    assert!(!err.is_empty());
    assert!(!out.exists(), "a refused run left {}", out.display());
}

#[test]
fn a_run_resumes_from_anywhere_on_its_own_data_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pack = d.join("pack.safetensors");
    synth(&pack, 4, 1);
    // Started with a relative --data, in the pack's folder.
    let mut args = train_args(Path::new("pack.safetensors"), Path::new("run"), &[]);
    args.extend(["--epochs".into(), "1".into()]);
    ok_in(Some(d), &os_refs(&args));
    let run = d.join("run");
    let elsewhere = tempfile::tempdir().unwrap();
    let resume = |extra: &[&OsStr]| -> Vec<OsString> {
        let mut args: Vec<OsString> = ["train", "--device", "cpu", "--resume"]
            .map(OsString::from)
            .to_vec();
        args.push(run.clone().into());
        args.extend(extra.iter().map(|a| a.to_os_string()));
        args
    };
    ok_in(Some(elsewhere.path()), &os_refs(&resume(&[])));
    // The same file by another path: absolute, or through another folder.
    ok_in(
        Some(elsewhere.path()),
        &os_refs(&resume(args!["--data", pack])),
    );
    ok_in(
        Some(d),
        &os_refs(&resume(args!["--data", "./run/../pack.safetensors"])),
    );
    // A copy of the same data elsewhere is the same data.
    let moved = elsewhere.path().join("moved.safetensors");
    std::fs::copy(&pack, &moved).unwrap();
    ok(&os_refs(&resume(args!["--data", moved])));
    // A run recorded before fingerprints (and with its relative path) still resumes, and says
    // it cannot check the data.
    let state_path = run.join("state.safetensors");
    let recorded = std::fs::read(&state_path).unwrap();
    let mut state = TrainingState::load(&state_path).unwrap();
    (state.config.data, state.config.data_fingerprint) = (Some("pack.safetensors".into()), None);
    state.save(&state_path).unwrap();
    let err = ok_in(Some(d), &os_refs(&resume(&[])));
    assert!(err.contains("predates data fingerprints"), "{err}");
    std::fs::write(&state_path, recorded).unwrap();
    // Another pack is refused, and so is the run's own pack once it changed.
    let other = d.join("other.safetensors");
    synth(&other, 4, 2);
    let err = fails(&os_refs(&resume(args!["--data", other])));
    assert!(err.contains("--data"), "{err}");
    std::fs::copy(&other, &pack).unwrap();
    let err = fails(&os_refs(&resume(&[])));
    assert!(
        err.contains(&pack.display().to_string()) && err.contains("changed"),
        "{err}"
    );
}
