//! `onebit train` and `onebit eval` end to end: a seeded run reproduces bit
//! for bit, the JIT and the interpreter report the same accuracy, a run
//! stopped after an epoch or by Ctrl-C in the middle of one and resumed ends
//! with the weights of an uninterrupted run, and bad checkpoints are refused
//! without being overwritten.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const ONEBIT: &str = env!("CARGO_BIN_EXE_onebit");

fn example(name: &str) -> String {
    format!("{}/examples/{name}.bnn", env!("CARGO_MANIFEST_DIR"))
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("onebit-train-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `onebit train` on the digits MLP with a constant schedule (so a run's
/// first epochs do not depend on how many epochs it has).
fn train_args(out: &Path, epochs: usize) -> Vec<String> {
    [
        "train",
        &example("mlp_digits"),
        "--data",
        "digits",
        "-o",
        out.to_str().unwrap(),
        "--epochs",
        &epochs.to_string(),
        "--batch",
        "16",
        "--schedule",
        "constant",
        "--threads",
        "1",
        "--seed",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn onebit(args: &[String]) -> Output {
    Command::new(ONEBIT).args(args).output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_seeded_run_reproduces_and_the_jit_agrees_with_the_interpreter() {
    let dir = scratch("seeded");
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    let mut args = train_args(&a, 3);
    args.extend(["--metrics".into(), dir.join("m.csv").display().to_string()]);
    args.extend([
        "--plot".into(),
        dir.join("curves.png").display().to_string(),
    ]);
    let stdout = ok(onebit(&args));
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with("test accuracy "), "{stdout}");
    ok(onebit(&train_args(&b, 3)));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let csv = std::fs::read_to_string(dir.join("m.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(std::fs::metadata(dir.join("curves.png")).unwrap().len() > 1000);

    let eval = |engine: &str| {
        let out = ok(onebit(
            &[
                "eval",
                &example("mlp_digits"),
                "--weights",
                a.to_str().unwrap(),
                "--data",
                "digits",
                "--engine",
                engine,
                "--json",
            ]
            .map(String::from),
        ));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        (
            v["accuracy"].as_f64().unwrap(),
            v["correct"].as_u64().unwrap(),
            v["total"].as_u64().unwrap(),
        )
    };
    let jit = eval("jit");
    assert_eq!(jit, eval("interp"));
    // The held-out split is 20% of 1,797, stratified; the MLP learns.
    assert_eq!(jit.2, 359);
    assert!(jit.0 > 0.8, "accuracy {}", jit.0);
    assert!(
        last.contains(&format!("({}/{})", jit.1, jit.2)),
        "{last} vs {jit:?}"
    );
}

#[test]
fn a_run_resumed_after_an_epoch_ends_like_an_uninterrupted_one() {
    let dir = scratch("resume");
    let whole = dir.join("whole.safetensors");
    ok(onebit(&train_args(&whole, 3)));
    let part = dir.join("part.safetensors");
    ok(onebit(&train_args(&part, 2)));
    let mut args = train_args(&part, 3);
    args.extend(["--resume".into(), format!("{}.ckpt", part.display())]);
    ok(onebit(&args));
    assert_eq!(
        std::fs::read(&whole).unwrap(),
        std::fs::read(&part).unwrap()
    );
}

#[test]
fn ctrl_c_in_the_middle_of_an_epoch_checkpoints_and_resumes_exactly() {
    let dir = scratch("sigint");
    // Batches of 2: hundreds of steps per epoch, so the run lasts long
    // enough to be interrupted in the middle of one.
    let train_args = |out: &Path, epochs: usize| {
        let mut args = train_args(out, epochs);
        let at = args.iter().position(|a| a == "--batch").unwrap();
        args[at + 1] = "2".into();
        args
    };
    let whole = dir.join("whole.safetensors");
    let started = Instant::now();
    ok(onebit(&train_args(&whole, 3)));
    let run_time = started.elapsed();

    let cut = dir.join("cut.safetensors");
    let child = Command::new(ONEBIT)
        .args(train_args(&cut, 3))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A third of the way through the run, almost surely inside epoch 1 or 2.
    std::thread::sleep(run_time / 3);
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ckpt = format!("{}.ckpt", cut.display());
    if out.status.success() {
        // The machine was so fast the run ended first: nothing to resume.
        assert!(run_time < Duration::from_millis(200), "{stderr}");
        return;
    }
    assert!(stderr.contains("interrupted in epoch"), "{stderr}");
    assert!(!cut.exists(), "an interrupted run writes no weights");
    let mut args = train_args(&cut, 3);
    args.extend(["--resume".into(), ckpt]);
    ok(onebit(&args));
    assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(&cut).unwrap());
}

#[test]
fn a_bad_checkpoint_is_refused_and_kept() {
    let dir = scratch("badckpt");
    let out = dir.join("w.safetensors");
    ok(onebit(&train_args(&out, 1)));
    let ckpt = PathBuf::from(format!("{}.ckpt", out.display()));
    let good = std::fs::read(&ckpt).unwrap();
    let truncated = dir.join("truncated.ckpt");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    let mut args = train_args(&out, 2);
    args.extend(["--resume".into(), truncated.display().to_string()]);
    args.extend(["--checkpoint".into(), ckpt.display().to_string()]);
    let result = onebit(&args);
    assert_eq!(result.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("truncated.ckpt"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        good,
        "the last good checkpoint is kept"
    );
}

#[test]
fn the_training_graph_prints_and_parses_back() {
    let out = ok(onebit(&[
        "ir".into(),
        example("digits_cnn"),
        "--train".into(),
    ]));
    assert!(out.contains("loss = cross_entropy(y, target)"), "{out}");
    let dir = scratch("ir");
    let path = dir.join("train.bnn");
    std::fs::write(&path, &out).unwrap();
    let again = ok(onebit(&["ir".into(), path.display().to_string()]));
    assert_eq!(again, out);
}

#[test]
fn train_refuses_to_overwrite_its_inputs() {
    let dir = scratch("outputs");
    let model = dir.join("m.bnn");
    std::fs::copy(example("mlp_digits"), &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    let mut args = train_args(&model, 1);
    args[1] = model.display().to_string();
    let out = onebit(&args);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to overwrite an input"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&model).unwrap(), before);
    // The weights and the checkpoint must be different files.
    let w = dir.join("w.safetensors");
    let mut args = train_args(&w, 1);
    args.extend(["--checkpoint".into(), w.display().to_string()]);
    let out = onebit(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(!w.exists(), "nothing was written");
}

#[test]
fn train_checks_threads_and_resource_limits_first() {
    let dir = scratch("limits");
    let out = dir.join("w.safetensors");
    let mut args = train_args(&out, 1);
    let at = args.iter().position(|a| a == "--threads").unwrap();
    args[at + 1] = "0".into();
    assert_eq!(onebit(&args).status.code(), Some(2));
    let huge = dir.join("huge.bnn");
    std::fs::write(
        &huge,
        "model m { input x: f32[65536]  y = dense(x, 65536)  output y }",
    )
    .unwrap();
    let mut args = train_args(&out, 1);
    args[1] = huge.display().to_string();
    let result = onebit(&args);
    assert_eq!(result.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("parameters need 16.00 GiB"), "{stderr}");
    assert!(!out.exists());
}

/// `--quantization-loss` and `--distribution-loss` add their terms to the
/// loss: the run trains (and differs from one without them), and a weight
/// that is not a finite number >= 0 is refused with the flag's meaning.
#[test]
fn loss_term_flags_train_and_bad_weights_are_refused() {
    let dir = scratch("terms");
    let (plain, terms) = (dir.join("plain.safetensors"), dir.join("terms.safetensors"));
    ok(onebit(&train_args(&plain, 2)));
    let mut args = train_args(&terms, 2);
    args.extend(["--quantization-loss", "0.001", "--distribution-loss", "0.5"].map(String::from));
    let stdout = ok(onebit(&args));
    let last = stdout.lines().last().unwrap();
    let accuracy: f64 = last
        .strip_prefix("test accuracy ")
        .and_then(|s| s.split('%').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(accuracy > 80.0, "{last}");
    assert_ne!(
        std::fs::read(&plain).unwrap(),
        std::fs::read(&terms).unwrap()
    );

    let mut bad = train_args(&dir.join("bad.safetensors"), 1);
    bad.push("--quantization-loss=-1".into());
    let out = onebit(&bad);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("the weight of the quantization loss must be a finite number >= 0, found -1"),
        "{stderr}"
    );
}

/// A model that declares its input's normalisation is trained and evaluated
/// on data normalised that way: `normalize(mean=8, std=8)` maps the digits'
/// 0..16 to −1..1 exactly as the data set's default does, so the weights are
/// the same bits; `--normalize` overrides the clause and says so.
#[test]
fn the_models_declared_normalisation_is_honoured_and_overridable() {
    let dir = scratch("declared");
    let source = std::fs::read_to_string(example("mlp_digits")).unwrap();
    let declared = source.replace(
        "input x: f32[64]",
        "input x: f32[64] normalize(mean=8, std=8)",
    );
    assert_ne!(declared, source);
    let model = dir.join("declared.bnn");
    std::fs::write(&model, declared).unwrap();
    let (default, own) = (dir.join("default.safetensors"), dir.join("own.safetensors"));
    ok(onebit(&train_args(&default, 1)));
    let mut args = train_args(&own, 1);
    args[1] = model.display().to_string();
    let stdout = ok(onebit(&args));
    assert_eq!(
        std::fs::read(&default).unwrap(),
        std::fs::read(&own).unwrap()
    );

    let eval = |extra: &[&str]| {
        let mut a = vec![
            "eval".to_string(),
            model.display().to_string(),
            "--weights".into(),
            own.display().to_string(),
            "--data".into(),
            "digits".into(),
            "--json".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        onebit(&a)
    };
    let out = eval(&[]);
    let v: serde_json::Value = serde_json::from_str(ok(out).trim()).unwrap();
    let correct = v["correct"].as_u64().unwrap();
    assert!(
        stdout
            .lines()
            .last()
            .unwrap()
            .contains(&format!("({correct}/359)")),
        "{stdout}"
    );
    let out = eval(&["--normalize", "none"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        stderr.contains(
            "note: --normalize none overrides the model's `normalize(mean=8, std=8)` of input `x`"
        ),
        "{stderr}"
    );
    ok(out);
    // `--normalize model` on a model without the clause is an error.
    let mut plain = train_args(&dir.join("x.safetensors"), 1);
    plain.extend(["--normalize", "model"].map(String::from));
    let out = onebit(&plain);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "--normalize model: input `x` of the model declares no `normalize(mean=…, std=…)`"
        ),
        "{stderr}"
    );
}

/// PCNN end to end: a projected model trains with the projection loss and
/// `onebit eval` (the JIT, after `fold_projection`) agrees with the
/// interpreter; the loss on a model without a projection is refused, naming
/// the model file.
#[test]
fn projected_models_train_and_a_projection_loss_needs_a_projection() {
    let dir = scratch("pcnn");
    let w = dir.join("w.safetensors");
    let mut args = train_args(&w, 2);
    args[1] = example("digits_pcnn");
    args.extend(["--projection-loss".into(), "1e-4".into()]);
    ok(onebit(&args));
    let eval = |engine: &[&str]| {
        let mut a: Vec<String> = ["eval", &example("digits_pcnn"), "--weights"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend([
            w.display().to_string(),
            "--data".into(),
            "digits".into(),
            "--json".into(),
        ]);
        a.extend(engine.iter().map(|s| s.to_string()));
        ok(onebit(&a))
    };
    let jit = eval(&[]);
    assert!(jit.contains("\"accuracy\":"), "{jit}");
    assert_eq!(jit, eval(&["--engine", "interp"]));

    let mut args = train_args(&dir.join("x.safetensors"), 1);
    args.extend(["--projection-loss".into(), "1e-4".into()]);
    let out = onebit(&args);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mlp_digits.bnn") && stderr.contains("`projection=true`"),
        "{stderr}"
    );
    assert!(!dir.join("x.safetensors").exists());
}
