//! Bad inputs through the command line, one test per defect class of the readers: what is not
//! a regular file, sizes too large to allocate, and MP_Data frame names. Every command must
//! end by itself (no hang, no panic, no abort) with a message naming the bad thing.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a command did: its exit code (None when a signal ended it) and its standard error.
struct Run {
    code: Option<i32>,
    stderr: String,
}

/// Runs the binary with `args` under a 4 GiB address-space limit (so that a reader that reads
/// an endless file fails fast instead of taking the machine's memory), killed after a minute.
fn signflow(args: &[&str]) -> Run {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 4194304; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_signflow"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("signflow {args:?} still runs after a minute");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    Run {
        code: status.code(),
        stderr,
    }
}

/// The command failed with exit code 1 (not a panic's 101, not a signal) and its message
/// holds every one of `words`.
fn assert_refused(run: &Run, words: &[&str]) {
    assert_eq!(run.code, Some(1), "exit code; stderr:\n{}", run.stderr);
    for w in words {
        assert!(run.stderr.contains(w), "{w:?} not in:\n{}", run.stderr);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn fixture_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden-small/model.safetensors")
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

#[test]
fn what_is_not_a_regular_file_is_refused_by_every_reader() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe.safetensors");
    mkfifo(&fifo);
    let folder = dir.path().join("folder.safetensors");
    std::fs::create_dir(&folder).unwrap();
    let out = dir.path().join("run");
    let model = fixture_model();
    let cases = [
        (Path::new("/dev/zero"), "a character device"),
        (fifo.as_path(), "a FIFO"),
        (folder.as_path(), "a folder"),
    ];
    for (bad, kind) in cases {
        let words = [s(bad), kind, "not a regular file"];
        let train =
            |flag: &str| signflow(&["train", "--device", "cpu", flag, s(bad), "--out", s(&out)]);
        assert_refused(&train("--data"), &words);
        assert_refused(&train("--config"), &words);
        let predict = |model: &Path, input: &Path| {
            signflow(&[
                "predict",
                "--device",
                "cpu",
                "--model",
                s(model),
                "--input",
                s(input),
            ])
        };
        assert_refused(&predict(bad, &model), &words);
        if kind != "a folder" {
            // A folder as --input is a sequence folder; the other two are not.
            assert_refused(&predict(&model, bad), &words);
            // Nor is either an MP_Data folder to import.
            let packed = dir.path().join("packed.safetensors");
            let import = signflow(&["data", "import", s(bad), "-o", s(&packed)]);
            assert_refused(&import, &[s(bad), "is not a folder"]);
        }
    }
}

#[test]
fn sizes_too_large_are_refused_before_anything_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("synth.safetensors");
    for sizes in [
        ["--frames", "100000000000"],
        ["--classes", "1000000000000"],
        ["--clips", "100000000000000"],
    ] {
        let mut args = vec!["data", "synth", "-o", s(&out)];
        args.extend(sizes);
        assert_refused(&signflow(&args), &["generated pack", sizes[1]]);
    }
    let args = [
        "data",
        "synth",
        "--classes",
        "100000",
        "--clips",
        "100000",
        "-o",
        s(&out),
    ];
    assert_refused(&signflow(&args), &["cannot allocate", "100000 classes"]);
    assert!(!out.exists());

    // Files whose headers declare far more than they hold.
    let pack = dir.path().join("huge.safetensors");
    let header = r#"{"__metadata__":{"format":"signflow-clips/1"},"lengths":{"dtype":"I64","shape":[2147483648],"data_offsets":[0,8]}}"#;
    write_safetensors(&pack, header, 8);
    let run = signflow(&[
        "train",
        "--device",
        "cpu",
        "--data",
        s(&pack),
        "--out",
        s(&out),
    ]);
    assert_refused(&run, &[s(&pack), "lengths", "2147483648"]);
    let ckpt = dir.path().join("huge-ckpt.safetensors");
    let header =
        r#"{"pos_embedding":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4]}}"#;
    write_safetensors(&ckpt, header, 4);
    let run = signflow(&[
        "predict",
        "--device",
        "cpu",
        "--model",
        s(&ckpt),
        "--input",
        s(&pack),
    ]);
    assert_refused(&run, &[s(&ckpt), "pos_embedding", "1099511627776"]);
    let header_len = dir.path().join("huge-header.safetensors");
    std::fs::write(&header_len, u64::MAX.to_le_bytes()).unwrap();
    let run = signflow(&[
        "train",
        "--device",
        "cpu",
        "--data",
        s(&header_len),
        "--out",
        s(&out),
    ]);
    assert_refused(&run, &[s(&header_len), "header"]);

    // A file larger than any machine's memory (sparse), its header true to its length.
    let body: u64 = 1 << 40;
    let header = format!(
        r#"{{"__metadata__":{{"format":"signflow-features/1"}},"features":{{"dtype":"F32","shape":[{},1,1],"data_offsets":[0,{body}]}}}}"#,
        body / 4
    );
    let sparse = dir.path().join("sparse.safetensors");
    write_safetensors(&sparse, &header, 0);
    let len = 8 + header.len() as u64 + body;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(&sparse)
        .unwrap();
    file.set_len(len).unwrap();
    let run = signflow(&[
        "train",
        "--device",
        "cpu",
        "--data",
        s(&sparse),
        "--out",
        s(&out),
    ]);
    assert_refused(&run, &[s(&sparse), &len.to_string(), "memory"]);

    // An .npy frame whose shape overflows.
    let seq = dir.path().join("seq");
    std::fs::create_dir(&seq).unwrap();
    let npy = npy_file(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967297), }",
        &[0; 16],
    );
    std::fs::write(seq.join("0.npy"), npy).unwrap();
    let run = signflow(&[
        "predict",
        "--device",
        "cpu",
        "--model",
        s(&fixture_model()),
        "--input",
        s(&seq),
    ]);
    assert_refused(&run, &["0.npy", "4294967296"]);
}

fn write_safetensors(path: &Path, header: &str, data_len: usize) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    bytes.resize(bytes.len() + data_len, 0);
    std::fs::write(path, bytes).unwrap();
}

fn npy_file(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// A float64 frame of 258 finite values.
fn frame() -> Vec<u8> {
    let values: Vec<u8> = (0..258)
        .flat_map(|j| (0.1 + 0.001 * j as f64).to_le_bytes())
        .collect();
    npy_file(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (258,), }",
        &values,
    )
}

/// An MP_Data folder of two classes with two good sequences each (frames 0..3).
fn mp_data(root: &Path) -> PathBuf {
    let dir = root.join("MP_Data");
    for class in ["a", "b"] {
        for seq in 0..2 {
            let seq_dir = dir.join(class).join(seq.to_string());
            std::fs::create_dir_all(&seq_dir).unwrap();
            for f in 0..3 {
                std::fs::write(seq_dir.join(format!("{f}.npy")), frame()).unwrap();
            }
        }
    }
    dir
}

#[test]
fn mp_data_frames_must_be_named_0_to_n_minus_1() {
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("pack.safetensors");
    let import = |dir: &Path, skip: bool| {
        let mut args = vec!["data", "import", s(dir), "-o", s(&out)];
        if skip {
            args.push("--skip-broken");
        }
        signflow(&args)
    };
    let seq = |dir: &Path| dir.join("a/1");
    // (what to do to sequence a/1, the names the message must give)
    let cases: Vec<(&str, Break, Vec<&str>)> = vec![
        ("a word", |d| add(d, "five.npy"), vec!["`five.npy`"]),
        ("a sign", |d| add(d, "-1.npy"), vec!["`-1.npy`"]),
        ("a leading zero", |d| add(d, "02.npy"), vec!["`02.npy`"]),
        (
            "an overflowing number",
            |d| add(d, "99999999999999999999999.npy"),
            vec!["`99999999999999999999999.npy`"],
        ),
        ("another file", |d| add(d, "notes.txt"), vec!["`notes.txt`"]),
        (
            "a gap",
            |d| std::fs::remove_file(d.join("1.npy")).unwrap(),
            vec!["missing: 1.npy"],
        ),
        (
            "a name that is not UTF-8",
            |d| {
                let name = std::ffi::OsStr::from_bytes(b"3\xff.npy");
                std::fs::write(d.join(name), frame()).unwrap();
            },
            vec!["not UTF-8"],
        ),
    ];
    for (what, break_it, words) in cases {
        let case = root.path().join(what.replace(' ', "-"));
        let dir = mp_data(&case);
        let broken = seq(&dir);
        break_it(&broken);
        let mut want = vec![s(&broken), "0.npy to N-1.npy"];
        want.extend(&words);
        let run = import(&dir, false);
        assert_refused(&run, &want);
        assert!(run.stderr.contains("skip_broken") || run.stderr.contains("skip-broken"));

        // With --skip-broken the sequence is dropped, said per sequence and counted.
        let run = import(&dir, true);
        assert_eq!(run.code, Some(0), "{what}: {}", run.stderr);
        let warning = run
            .stderr
            .lines()
            .find(|l| l.contains("warning") && l.contains(s(&seq(&dir))))
            .unwrap_or_else(|| panic!("{what}: no warning in {}", run.stderr));
        for w in &words {
            assert!(warning.contains(w), "{what}: {w:?} not in {warning}");
        }
        assert!(run.stderr.contains("imported 3 clips"), "{}", run.stderr);
        assert!(
            run.stderr.contains("skipped 1 broken clips"),
            "{}",
            run.stderr
        );
    }

    // 05.npy beside 5.npy: the second is a duplicate in disguise.
    let dir = mp_data(&root.path().join("twins"));
    for f in 3..6 {
        std::fs::write(seq(&dir).join(format!("{f}.npy")), frame()).unwrap();
    }
    add(&seq(&dir), "05.npy");
    assert_refused(&import(&dir, false), &[s(&seq(&dir)), "`05.npy`"]);

    // An empty class folder, or a class whose every clip is broken, is no class.
    let dir = mp_data(&root.path().join("empty-class"));
    let empty = dir.join("c");
    std::fs::create_dir(&empty).unwrap();
    assert_refused(&import(&dir, false), &[s(&empty), "no sequence folders"]);
    let run = import(&dir, true);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.stderr.contains("imported 4 clips of 2 classes (a, b)"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains("warning") && l.contains(s(&empty))),
        "{}",
        run.stderr
    );
}

/// Something done to a good sequence folder to break it.
type Break = fn(&Path);

fn add(seq: &Path, name: &str) {
    std::fs::write(seq.join(name), frame()).unwrap();
}
